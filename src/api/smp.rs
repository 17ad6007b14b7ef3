//! Strategic merge patch, as `k8s.io/apimachinery/pkg/util/strategicpatch`
//! applies it: maps merge (null deletes a key); lists replace unless the
//! type declares a strategy ([`super::schema`]): lists of objects with a
//! merge key merge element by element, lists of primitives with `merge`
//! become a set union. The directives kubectl's three-way apply sends are
//! honoured: `$patch: replace | delete | merge`, `$retainKeys`,
//! `$setElementOrder/FIELD` and `$deleteFromPrimitiveList/FIELD`.
//!
//! Where no strategy applies, the result is exactly a JSON merge patch
//! (RFC 7386); the property test below holds it to that.

use serde_json::{Map, Value};

use super::schema::{schemas, strategy, FieldType};

const PATCH: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ORDER: &str = "$setElementOrder/";
const DELETE_FROM: &str = "$deleteFromPrimitiveList/";

/// A patch that cannot be applied, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PatchError(pub String);

fn err(s: impl Into<String>) -> PatchError {
    PatchError(s.into())
}

/// Apply `patch` to `original`, an object of definition `ty` (e.g.
/// `io.k8s.api.apps.v1.Deployment`; `None` for an unknown type, which
/// merges as a JSON merge patch).
pub fn apply(original: &Value, patch: &Value, ty: Option<&str>) -> Result<Value, PatchError> {
    match (original, patch) {
        (Value::Object(o), Value::Object(p)) => merge_map(o.clone(), p, ty)
            .map(|m| m.unwrap_or_default())
            .map(Value::Object),
        (_, Value::Object(p)) => merge_map(Map::new(), p, ty)
            .map(|m| m.unwrap_or_default())
            .map(Value::Object),
        _ => Err(err("a strategic merge patch must be a JSON object")),
    }
}

/// A patch value with its directives removed (for values that replace).
fn strip(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(
            a.iter()
                .filter(|e| e.get(PATCH).is_none())
                .map(strip)
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Merge `patch` into the map `orig` of type `ty`. `None`: the map is deleted.
fn merge_map(
    mut orig: Map<String, Value>,
    patch: &Map<String, Value>,
    ty: Option<&str>,
) -> Result<Option<Map<String, Value>>, PatchError> {
    match patch.get(PATCH).and_then(Value::as_str) {
        Some("replace") => {
            return match strip(&Value::Object(patch.clone())) {
                Value::Object(m) => Ok(Some(m)),
                _ => Ok(Some(Map::new())),
            }
        }
        Some("delete") => return Ok(None),
        Some("merge") | None => {}
        Some(other) => return Err(err(format!("unknown patch type {other:?} in $patch"))),
    }
    if let Some(keep) = patch.get(RETAIN_KEYS) {
        let keep: Vec<&str> = keep
            .as_array()
            .ok_or_else(|| err("$retainKeys must be a list of field names"))?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        orig.retain(|k, _| keep.contains(&k.as_str()));
    }
    let mut orders: Vec<(&str, &Value)> = Vec::new();
    for (k, v) in patch {
        if let Some(field) = k.strip_prefix(DELETE_FROM) {
            let gone = v
                .as_array()
                .ok_or_else(|| err(format!("{k} must be a list")))?;
            if let Some(Value::Array(list)) = orig.get_mut(field) {
                list.retain(|x| !gone.contains(x));
            }
        } else if let Some(field) = k.strip_prefix(SET_ORDER) {
            orders.push((field, v));
        }
    }
    for (k, v) in patch {
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            orig.remove(k);
            continue;
        }
        let field = ty
            .map(|t| schemas().field(t, k))
            .unwrap_or(FieldType::Other);
        let strat = ty.and_then(|t| strategy(t, k));
        let merged = match (orig.remove(k), v) {
            (Some(Value::Object(o)), Value::Object(p)) => {
                let inner = match &field {
                    FieldType::Object(t) => Some(t.as_str()),
                    _ => None,
                };
                // a map of named objects (rare): each value merges as its type
                let value_ty = match &field {
                    FieldType::Map(t) => t.as_deref(),
                    _ => None,
                };
                match value_ty {
                    Some(vt) => {
                        let mut out = o;
                        for (mk, mv) in p {
                            if mv.is_null() {
                                out.remove(mk);
                                continue;
                            }
                            let next = match (out.remove(mk), mv) {
                                (Some(Value::Object(a)), Value::Object(b)) => {
                                    merge_map(a, b, Some(vt))?.map(Value::Object)
                                }
                                (_, other) => Some(strip(other)),
                            };
                            if let Some(n) = next {
                                out.insert(mk.clone(), n);
                            }
                        }
                        Some(Value::Object(out))
                    }
                    None => merge_map(o, p, inner)?.map(Value::Object),
                }
            }
            (Some(Value::Array(o)), Value::Array(p)) if strat.is_some_and(|s| s.merge) => {
                let s = strat.expect("checked");
                let elem = match &field {
                    FieldType::List(t) => t.as_deref(),
                    _ => None,
                };
                Some(Value::Array(merge_list(o, p, s.key, elem)?))
            }
            // a map where there was none (or something else): merged into an empty map
            (_, Value::Object(p)) => {
                let inner = match &field {
                    FieldType::Object(t) => Some(t.as_str()),
                    _ => None,
                };
                merge_map(Map::new(), p, inner)?.map(Value::Object)
            }
            (None, Value::Array(p)) if strat.is_some_and(|s| s.merge) => {
                let s = strat.expect("checked");
                let elem = match &field {
                    FieldType::List(t) => t.as_deref(),
                    _ => None,
                };
                Some(Value::Array(merge_list(Vec::new(), p, s.key, elem)?))
            }
            (_, other) => Some(strip(other)),
        };
        if let Some(m) = merged {
            orig.insert(k.clone(), m);
        }
    }
    for (field, order) in orders {
        let key = ty.and_then(|t| strategy(t, field)).and_then(|s| s.key);
        if let Some(Value::Array(list)) = orig.get_mut(field) {
            reorder(list, order, key)?;
        }
    }
    Ok(Some(orig))
}

/// The merge key's value of a list element.
fn key_of<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key)
}

/// Merge the patch list `patch` into `orig`: by `key` for objects, as a set
/// for primitives.
fn merge_list(
    mut orig: Vec<Value>,
    patch: &[Value],
    key: Option<&str>,
    elem: Option<&str>,
) -> Result<Vec<Value>, PatchError> {
    // `[{"$patch": "replace"}, ...]`: the list becomes the rest of the patch
    if patch
        .iter()
        .any(|e| e.get(PATCH).and_then(Value::as_str) == Some("replace"))
    {
        return Ok(patch
            .iter()
            .filter(|e| e.get(PATCH).is_none())
            .map(strip)
            .collect());
    }
    let Some(key) = key else {
        // a set of primitives
        for p in patch {
            if !orig.contains(p) {
                orig.push(p.clone());
            }
        }
        return Ok(orig);
    };
    for p in patch {
        let Some(pm) = p.as_object() else {
            return Err(err(format!(
                "a list merged by {key:?} must hold objects, not {p}"
            )));
        };
        let k = key_of(p, key).ok_or_else(|| {
            err(format!(
                "map: {p} does not contain declared merge key: {key}"
            ))
        })?;
        let at = orig.iter().position(|o| key_of(o, key) == Some(k));
        match pm.get(PATCH).and_then(Value::as_str) {
            Some("delete") => {
                if let Some(i) = at {
                    orig.remove(i);
                }
            }
            Some("replace") => {
                let v = strip(p);
                match at {
                    Some(i) => orig[i] = v,
                    None => orig.push(v),
                }
            }
            _ => match at {
                Some(i) => {
                    let current = match std::mem::take(&mut orig[i]) {
                        Value::Object(m) => m,
                        _ => Map::new(),
                    };
                    match merge_map(current, pm, elem)? {
                        Some(m) => orig[i] = Value::Object(m),
                        None => {
                            orig.remove(i);
                        }
                    }
                }
                None => {
                    if let Some(m) = merge_map(Map::new(), pm, elem)? {
                        orig.push(Value::Object(m));
                    }
                }
            },
        }
    }
    Ok(orig)
}

/// Put the elements named in `order` first, in that order; the rest keep
/// their relative order after them.
fn reorder(list: &mut Vec<Value>, order: &Value, key: Option<&str>) -> Result<(), PatchError> {
    let order = order
        .as_array()
        .ok_or_else(|| err("$setElementOrder must be a list"))?;
    let ident = |v: &Value| -> Value {
        match key {
            Some(k) => v.get(k).cloned().unwrap_or(Value::Null),
            None => v.clone(),
        }
    };
    let wanted: Vec<Value> = order.iter().map(ident).collect();
    let mut first: Vec<Value> = Vec::new();
    for w in &wanted {
        if let Some(i) = list.iter().position(|e| ident(e) == *w) {
            first.push(list.remove(i));
        }
    }
    first.append(list);
    *list = first;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const DEPLOY: Option<&str> = Some("io.k8s.api.apps.v1.Deployment");

    fn deploy() -> Value {
        json!({"metadata": {"name": "web", "labels": {"app": "web"}, "finalizers": ["a"]},
            "spec": {"replicas": 2, "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
                "template": {"spec": {
                    "containers": [
                        {"name": "main", "image": "main:1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                         "ports": [{"containerPort": 80}]},
                        {"name": "side", "image": "side:1"}],
                    "volumes": [{"name": "data", "emptyDir": {}}],
                    "tolerations": [{"key": "a"}]}}}})
    }

    fn containers(v: &Value) -> &Vec<Value> {
        v["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
    }

    #[test]
    fn set_image_of_one_container_keeps_the_others() {
        // what `kubectl set image deploy/web side=side:2` sends
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "side", "image": "side:2"}]}}}});
        let out = apply(&deploy(), &patch, DEPLOY).unwrap();
        let cs = containers(&out);
        assert_eq!(cs.len(), 2, "main is not lost");
        assert_eq!(cs[0]["image"], "main:1");
        assert_eq!(cs[1]["image"], "side:2");
    }

    #[test]
    fn env_merges_by_name_and_ports_by_container_port() {
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "main",
            "env": [{"name": "B", "value": "two"}, {"name": "C", "value": "3"}],
            "ports": [{"containerPort": 443}]}]}}}});
        let out = apply(&deploy(), &patch, DEPLOY).unwrap();
        let main = &containers(&out)[0];
        assert_eq!(
            main["env"],
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "two"}, {"name": "C", "value": "3"}])
        );
        assert_eq!(
            main["ports"],
            json!([{"containerPort": 80}, {"containerPort": 443}])
        );
        assert_eq!(main["image"], "main:1");
    }

    #[test]
    fn lists_without_a_strategy_are_replaced() {
        let patch = json!({"spec": {"template": {"spec": {"tolerations": [{"key": "b"}]}}}});
        let out = apply(&deploy(), &patch, DEPLOY).unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"]["tolerations"],
            json!([{"key": "b"}])
        );
    }

    #[test]
    fn delete_and_replace_directives() {
        // delete one element by key
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "side", "$patch": "delete"}]}}}});
        let out = apply(&deploy(), &patch, DEPLOY).unwrap();
        assert_eq!(containers(&out).len(), 1);
        assert_eq!(containers(&out)[0]["name"], "main");
        // replace a whole list
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"$patch": "replace"}, {"name": "only", "image": "x"}]}}}});
        let out = apply(&deploy(), &patch, DEPLOY).unwrap();
        assert_eq!(
            containers(&out),
            &vec![json!({"name": "only", "image": "x"})]
        );
        // replace a map
        let patch = json!({"metadata": {"labels": {"$patch": "replace", "tier": "front"}}});
        let out = apply(&deploy(), &patch, DEPLOY).unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"tier": "front"}));
        // delete a map
        let patch = json!({"spec": {"strategy": {"$patch": "delete"}}});
        let out = apply(&deploy(), &patch, DEPLOY).unwrap();
        assert!(out["spec"].get("strategy").is_none());
        // null deletes a key
        let patch = json!({"spec": {"replicas": null}});
        assert!(apply(&deploy(), &patch, DEPLOY).unwrap()["spec"]
            .get("replicas")
            .is_none());
        assert!(apply(&deploy(), &json!({"$patch": "bogus"}), DEPLOY).is_err());
    }

    #[test]
    fn retain_keys_clears_what_the_new_strategy_does_not_name() {
        // switching to Recreate: the old rollingUpdate must go (kubectl apply sends $retainKeys)
        let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null}}});
        let out = apply(&deploy(), &patch, DEPLOY).unwrap();
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
        // volumes: a volume changing its source
        let patch = json!({"spec": {"template": {"spec": {"volumes": [
            {"name": "data", "$retainKeys": ["name", "hostPath"], "hostPath": {"path": "/srv"}}]}}}});
        let out = apply(&deploy(), &patch, DEPLOY).unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"]["volumes"],
            json!([{"name": "data", "hostPath": {"path": "/srv"}}])
        );
    }

    #[test]
    fn element_order_and_primitive_list_deletions() {
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "side"}, {"name": "main"}],
            "containers": [{"name": "side", "image": "side:3"}]}}}});
        let out = apply(&deploy(), &patch, DEPLOY).unwrap();
        assert_eq!(containers(&out)[0]["name"], "side");
        assert_eq!(containers(&out)[1]["name"], "main");
        // finalizers merge as a set; $deleteFromPrimitiveList removes
        let patch = json!({"metadata": {"finalizers": ["b", "a"]}});
        let out = apply(&deploy(), &patch, DEPLOY).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b"]));
        let patch = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}});
        let out = apply(&out, &patch, DEPLOY).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
    }

    #[test]
    fn a_merged_element_needs_its_key() {
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}});
        let e = apply(&deploy(), &patch, DEPLOY).unwrap_err();
        assert!(
            e.0.contains("does not contain declared merge key: name"),
            "{e}"
        );
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-5i64..5).prop_map(|n| json!(n)),
            "[a-c]{0,2}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map("[a-d]", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn arb_object() -> impl Strategy<Value = Value> {
        prop::collection::btree_map("[a-d]", arb_json(), 0..4)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    }

    proptest! {
        /// Where no type declares a strategy, a strategic merge patch is a
        /// JSON merge patch (RFC 7386).
        #[test]
        fn without_strategies_it_is_a_json_merge_patch(doc in arb_object(), patch in arb_object()) {
            let mut expected = doc.clone();
            json_patch::merge(&mut expected, &patch);
            let got = apply(&doc, &patch, None).unwrap();
            prop_assert_eq!(got, expected);
        }

        /// Applying the same patch twice changes nothing more (for merges by key).
        #[test]
        fn merging_env_is_idempotent(names in prop::collection::vec("[a-e]", 0..5), value in "[x-z]") {
            let env: Vec<Value> = names.iter().map(|n| json!({"name": n, "value": value})).collect();
            let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "main", "env": env}]}}}});
            let once = apply(&deploy(), &patch, DEPLOY).unwrap();
            let twice = apply(&once, &patch, DEPLOY).unwrap();
            prop_assert_eq!(&once, &twice);
            prop_assert_eq!(containers(&once).len(), 2);
        }
    }
}
