//! Label and field selectors, parsed from their query-string syntax
//! (`app=web,tier!=db,env in (a,b),!canary`) and matched against objects.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

/// A selector could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("unable to parse requirement: {0}")]
    Syntax(String),
    #[error("invalid label key {0:?}: {1}")]
    InvalidKey(String, String),
    #[error("invalid label value {0:?}: {1}")]
    InvalidValue(String, String),
    #[error("field label not supported: {0}")]
    UnsupportedField(String),
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A label selector: every requirement must hold. Empty selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(pub Vec<Requirement>);

fn valid_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Check a label key (`[prefix/]name`); returns why it is invalid.
pub fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if crate::api::validation::check_dns_subdomain(p).is_err() {
            return Err("prefix part must be a DNS-1123 subdomain".into());
        }
    }
    if !valid_name_part(name) {
        return Err("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (max 63)".into());
    }
    Ok(())
}

/// Check a label value (empty, or like a key's name part).
pub fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || valid_name_part(value) {
        Ok(())
    } else {
        Err("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (max 63)".into())
    }
}

/// Split on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn key(k: &str) -> Result<String, SelectorError> {
    let k = k.trim();
    check_label_key(k).map_err(|e| SelectorError::InvalidKey(k.into(), e))?;
    Ok(k.to_string())
}

fn value(v: &str) -> Result<String, SelectorError> {
    let v = v.trim();
    check_label_value(v).map_err(|e| SelectorError::InvalidValue(v.into(), e))?;
    Ok(v.to_string())
}

fn set_op(part: &str, op: &str) -> Option<(String, String)> {
    // `key in (a,b)` / `key notin (a,b)`, with whitespace around the operator.
    let needle = format!(" {op} ");
    let idx = part
        .find(&needle)
        .or_else(|| part.find(&format!(" {op}(")))?;
    let (k, rest) = part.split_at(idx);
    let rest = rest.trim_start()[op.len()..].trim();
    Some((k.to_string(), rest.to_string()))
}

fn set_values(s: &str, whole: &str) -> Result<Vec<String>, SelectorError> {
    let inner = s
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| {
            SelectorError::Syntax(format!("{whole}: expected a parenthesised set of values"))
        })?;
    let values: Result<Vec<_>, _> = inner.split(',').map(value).collect();
    let mut values = values?;
    values.sort();
    values.dedup();
    Ok(values)
}

impl LabelSelector {
    /// Parse the query-string form.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(Self::default());
        }
        let mut reqs = Vec::new();
        for raw in split_top(s) {
            let part = raw.trim();
            if part.is_empty() {
                return Err(SelectorError::Syntax(format!("{s}: empty requirement")));
            }
            let req = if let Some(k) = part.strip_prefix('!') {
                Requirement::DoesNotExist(key(k)?)
            } else if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(key(k)?, value(v)?)
            } else if let Some((k, v)) = part.split_once("==") {
                Requirement::Equals(key(k)?, value(v)?)
            } else if let Some((k, v)) = part.split_once('=') {
                Requirement::Equals(key(k)?, value(v)?)
            } else if let Some((k, v)) = set_op(part, "notin") {
                Requirement::NotIn(key(&k)?, set_values(&v, part)?)
            } else if let Some((k, v)) = set_op(part, "in") {
                Requirement::In(key(&k)?, set_values(&v, part)?)
            } else if part.contains(char::is_whitespace) || part.contains('(') {
                return Err(SelectorError::Syntax(part.to_string()));
            } else {
                Requirement::Exists(key(part)?)
            };
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    /// Build from a `metav1.LabelSelector` object (`matchLabels`, `matchExpressions`).
    pub fn from_object(sel: &Value) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in m {
                reqs.push(Requirement::Equals(
                    key(k)?,
                    value(v.as_str().unwrap_or_default())?,
                ));
            }
        }
        if let Some(exprs) = sel.get("matchExpressions").and_then(Value::as_array) {
            for e in exprs {
                let k = key(e.get("key").and_then(Value::as_str).unwrap_or_default())?;
                let mut vals: Vec<String> = e
                    .get("values")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                vals.sort();
                vals.dedup();
                let op = e
                    .get("operator")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                reqs.push(match op {
                    "In" => Requirement::In(k, vals),
                    "NotIn" => Requirement::NotIn(k, vals),
                    "Exists" => Requirement::Exists(k),
                    "DoesNotExist" => Requirement::DoesNotExist(k),
                    other => {
                        return Err(SelectorError::Syntax(format!(
                            "{other:?} is not a valid label selector operator"
                        )))
                    }
                });
            }
        }
        Ok(Self(reqs))
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }

    /// Match an object's `metadata.labels`.
    pub fn matches_object(&self, obj: &Value) -> bool {
        if self.0.is_empty() {
            return true;
        }
        self.matches(&labels_of(obj))
    }

    /// Whether the selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|r| match r {
                Requirement::Equals(k, v) => format!("{k}={v}"),
                Requirement::NotEquals(k, v) => format!("{k}!={v}"),
                Requirement::In(k, vs) => format!("{k} in ({})", vs.join(",")),
                Requirement::NotIn(k, vs) => format!("{k} notin ({})", vs.join(",")),
                Requirement::Exists(k) => k.clone(),
                Requirement::DoesNotExist(k) => format!("!{k}"),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// An object's labels as a map.
pub fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// A field selector: `path=value` / `path!=value` requirements, all of which must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(pub Vec<(String, bool, String)>);

/// Field paths every kind supports.
const COMMON_FIELDS: &[&str] = &["metadata.name", "metadata.namespace"];

/// Extra field paths a kind supports, as in kube-apiserver.
pub fn supported_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "Pod" => &[
            "spec.nodeName",
            "status.phase",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        "Event" => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        "Secret" => &["type"],
        "Node" => &["spec.unschedulable"],
        "Namespace" => &["status.phase"],
        "Job" => &["status.successful"],
        "ReplicaSet" => &["status.replicas"],
        _ => &[],
    }
}

impl FieldSelector {
    /// Parse `a=b,c!=d` and check every path is supported for `kind`.
    pub fn parse(s: &str, kind: &str) -> Result<Self, SelectorError> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(Self::default());
        }
        let mut reqs = Vec::new();
        for part in s.split(',') {
            let (path, eq, val) = if let Some((k, v)) = part.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = part.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = part.split_once('=') {
                (k, true, v)
            } else {
                return Err(SelectorError::Syntax(format!(
                    "invalid field selector: {part:?}"
                )));
            };
            let path = path.trim();
            if !COMMON_FIELDS.contains(&path) && !supported_fields(kind).contains(&path) {
                return Err(SelectorError::UnsupportedField(path.to_string()));
            }
            reqs.push((path.to_string(), eq, val.trim().to_string()));
        }
        Ok(Self(reqs))
    }

    /// Whether `obj` satisfies every requirement (a missing field reads as "").
    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(path, eq, want)| {
            let mut cur = Some(obj);
            for seg in path.split('.') {
                cur = cur.and_then(|c| c.get(seg));
            }
            let have = match cur {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::Object(o)) if path == "source" => o
                    .get("component")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (have == *want) == *eq
        })
    }

    /// The value an equality requirement pins `path` to, if any.
    pub fn pinned(&self, path: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(p, eq, _)| p == path && *eq)
            .map(|(_, _, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_operator_matches_like_kubernetes() {
        let l = labels(&[("app", "web"), ("tier", "front"), ("env", "prod")]);
        let cases = [
            ("app=web", true),
            ("app==web", true),
            ("app=db", false),
            ("app!=db", true),
            ("missing!=x", true),
            ("env in (prod,staging)", true),
            ("env in (dev)", false),
            ("env notin (dev,staging)", true),
            ("missing notin (a)", true),
            ("tier", true),
            ("missing", false),
            ("!missing", true),
            ("!app", false),
            ("app=web,env in (prod),!canary", true),
            ("app=web,env in (dev)", false),
            ("", true),
        ];
        for (sel, want) in cases {
            assert_eq!(
                LabelSelector::parse(sel).unwrap().matches(&l),
                want,
                "{sel}"
            );
        }
    }

    #[test]
    fn bad_selectors_are_rejected_with_the_reason() {
        assert!(matches!(
            LabelSelector::parse("app in a,b"),
            Err(SelectorError::Syntax(_))
        ));
        assert!(matches!(
            LabelSelector::parse("-bad=x"),
            Err(SelectorError::InvalidKey(..))
        ));
        assert!(matches!(
            LabelSelector::parse("a=b c"),
            Err(SelectorError::InvalidValue(..))
        ));
        assert!(matches!(
            LabelSelector::parse("a=b,,c=d"),
            Err(SelectorError::Syntax(_))
        ));
    }

    #[test]
    fn label_selector_object_converts() {
        let sel = LabelSelector::from_object(&json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "dev"]}]
        }))
        .unwrap();
        assert_eq!(sel.to_string(), "app=web,env in (dev,prod)");
    }

    #[test]
    fn field_selectors_read_paths_and_reject_unknown_fields() {
        let pod = json!({"metadata": {"name": "a", "namespace": "ns"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let fs = FieldSelector::parse("spec.nodeName=n1,status.phase!=Failed", "Pod").unwrap();
        assert!(fs.matches(&pod));
        assert!(!FieldSelector::parse("spec.nodeName=", "Pod")
            .unwrap()
            .matches(&pod));
        assert!(FieldSelector::parse("metadata.name=a", "ConfigMap")
            .unwrap()
            .matches(&pod));
        assert_eq!(
            FieldSelector::parse("spec.foo=bar", "Pod"),
            Err(SelectorError::UnsupportedField("spec.foo".into()))
        );
    }

    fn arb_token() -> impl Strategy<Value = String> + Clone {
        "[a-z0-9]([a-z0-9._-]{0,8}[a-z0-9])?"
    }

    fn arb_req() -> impl Strategy<Value = Requirement> {
        let k = arb_token();
        prop_oneof![
            (k.clone(), arb_token()).prop_map(|(k, v)| Requirement::Equals(k, v)),
            (k.clone(), arb_token()).prop_map(|(k, v)| Requirement::NotEquals(k, v)),
            (k.clone(), prop::collection::btree_set(arb_token(), 1..4))
                .prop_map(|(k, v)| Requirement::In(k, v.into_iter().collect())),
            (k.clone(), prop::collection::btree_set(arb_token(), 1..4))
                .prop_map(|(k, v)| Requirement::NotIn(k, v.into_iter().collect())),
            k.clone().prop_map(Requirement::Exists),
            k.prop_map(Requirement::DoesNotExist),
        ]
    }

    proptest! {
        #[test]
        fn label_selectors_round_trip_through_their_string_form(reqs in prop::collection::vec(arb_req(), 0..5)) {
            let sel = LabelSelector(reqs);
            let parsed = LabelSelector::parse(&sel.to_string()).unwrap();
            prop_assert_eq!(parsed, sel);
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(s in ".{0,40}") {
            let _ = LabelSelector::parse(&s);
            let _ = FieldSelector::parse(&s, "Pod");
        }

        #[test]
        fn notin_is_the_negation_of_in(vals in prop::collection::btree_set(arb_token(), 1..4), have in prop::option::of(arb_token())) {
            let vals: Vec<String> = vals.into_iter().collect();
            let l: BTreeMap<String, String> = have.iter().map(|v| ("k".to_string(), v.clone())).collect();
            let i = LabelSelector(vec![Requirement::In("k".into(), vals.clone())]).matches(&l);
            let n = LabelSelector(vec![Requirement::NotIn("k".into(), vals)]).matches(&l);
            prop_assert_eq!(i, !n);
        }
    }
}
