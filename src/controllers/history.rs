//! Revision history for StatefulSets and DaemonSets, kept as
//! `apps/v1` ControllerRevisions the way their Kubernetes controllers keep
//! it, so `kubectl rollout history|undo sts/NAME` and `ds/NAME` work.
//!
//! One revision per distinct pod template, named `OWNER-HASH`, labelled with
//! the template's labels and `controller.kubernetes.io/hash`, owned by the
//! set as its controller. Its `data` is the strategic merge patch that puts
//! the template back (`{"spec":{"template":{..., "$patch":"replace"}}}`): it
//! is exactly what `kubectl rollout undo` sends. Revisions are numbered
//! upwards; returning to an older template renumbers its revision to the
//! newest rather than copying it. Revisions neither current nor used by a
//! live pod are pruned beyond `spec.revisionHistoryLimit` (default 10).
//!
//! [`plan`] decides (pure).

use std::sync::Arc;

use serde_json::{json, Value};

use super::deployment::template_hash;
use super::replicaset::owner_ref;
use crate::api::{meta, resources};
use crate::client::{Client, ClientError};

/// The pod label naming the revision a pod was made from (for a
/// StatefulSet the revision's name, for a DaemonSet its hash).
pub const POD_LABEL: &str = "controller-revision-hash";
/// The label a revision carries with its hash.
pub const HASH_LABEL: &str = "controller.kubernetes.io/hash";

/// What to write for a set's history.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// The name of the revision of the current template.
    pub update_revision: String,
    /// The hash of the current template.
    pub hash: String,
    /// A revision to create.
    pub create: Option<Value>,
    /// An existing revision to renumber (name, new revision number).
    pub renumber: Option<(String, i64)>,
    /// Revisions to delete.
    pub delete: Vec<String>,
}

/// The hash naming the revision of `template`: of its normalised form, so
/// a template written back by `rollout undo` (with the fields Go adds)
/// is the same revision.
pub fn hash(template: &Value) -> String {
    template_hash(&data(template))
}

/// The revision number of `rev`.
pub fn number(rev: &Value) -> i64 {
    rev["revision"].as_i64().unwrap_or(0)
}

/// The patch that restores `template`, byte for byte as Kubernetes writes
/// it: kubectl decides "already at this revision" by comparing bytes with
/// what Go's encoder makes of the live set, so the template carries the
/// fields Go always writes (`creationTimestamp: null`, each container's
/// `resources: {}`) and every object's keys are sorted, as Go sorts a map's.
pub fn data(template: &Value) -> Value {
    let mut t = template.clone();
    if !t.is_object() {
        t = json!({});
    }
    if !t["metadata"].is_object() {
        t["metadata"] = json!({});
    }
    if t["metadata"].get("creationTimestamp").is_none() {
        t["metadata"]["creationTimestamp"] = Value::Null;
    }
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        if let Some(cs) = t
            .get_mut("spec")
            .and_then(|s| s.get_mut(list))
            .and_then(Value::as_array_mut)
        {
            for c in cs {
                if c.get("resources").is_none() {
                    c["resources"] = json!({});
                }
            }
        }
    }
    t["$patch"] = json!("replace");
    sorted(&json!({"spec": {"template": t}}))
}

/// `v` with the keys of every object in byte order.
fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), sorted(&m[k])))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// Decide the history of `owner` (of `kind`, `apps/v1`) given its
/// revisions and the revision names its live pods use.
pub fn plan(owner: &Value, kind: &str, revisions: &[Arc<Value>], in_use: &[String]) -> Plan {
    let template = &owner["spec"]["template"];
    let hash = hash(template);
    let name = format!("{}-{hash}", meta::name(owner));
    let max = revisions.iter().map(|r| number(r)).max().unwrap_or(0);
    let mut plan = Plan {
        update_revision: name.clone(),
        hash: hash.clone(),
        ..Plan::default()
    };
    match revisions.iter().find(|r| meta::name(r) == name) {
        Some(r) if number(r) < max => plan.renumber = Some((name.clone(), max + 1)),
        Some(_) => {}
        None => {
            let mut labels = template["metadata"]["labels"].clone();
            if !labels.is_object() {
                labels = json!({});
            }
            labels[HASH_LABEL] = json!(hash);
            let mut metadata = json!({
                "name": name,
                "namespace": meta::namespace(owner),
                "labels": labels,
                "ownerReferences": [owner_ref(owner, "apps/v1", kind)],
            });
            if let Some(a) = owner["metadata"]["annotations"].as_object() {
                let mut a = a.clone();
                a.remove("kubectl.kubernetes.io/last-applied-configuration");
                if !a.is_empty() {
                    metadata["annotations"] = json!(a);
                }
            }
            plan.create = Some(json!({
                "apiVersion": "apps/v1",
                "kind": "ControllerRevision",
                "metadata": metadata,
                "data": data(template),
                "revision": max + 1,
            }));
        }
    }
    let limit = owner["spec"]["revisionHistoryLimit"]
        .as_i64()
        .unwrap_or(10)
        .max(0) as usize;
    let mut old: Vec<&Arc<Value>> = revisions
        .iter()
        .filter(|r| {
            let n = meta::name(r);
            n != name && !in_use.iter().any(|u| u == n)
        })
        .collect();
    if old.len() > limit {
        old.sort_by_key(|r| number(r));
        let excess = old.len() - limit;
        plan.delete = old[..excess]
            .iter()
            .map(|r| meta::name(r).to_string())
            .collect();
    }
    plan
}

/// Carry out `plan` for `owner`'s history.
pub async fn apply(client: &Client, owner: &Value, plan: &Plan) -> Result<(), ClientError> {
    let res = resources::lookup("controllerrevisions").expect("controllerrevisions are served");
    let ns = meta::namespace(owner);
    if let Some(rev) = &plan.create {
        match client.create(res, Some(ns), rev).await {
            Ok(_) => {}
            Err(e) if e.code() == Some(409) => {}
            Err(e) => return Err(e),
        }
    }
    if let Some((name, n)) = &plan.renumber {
        client
            .merge_patch(res, Some(ns), name, &json!({"revision": n}))
            .await?;
    }
    for name in &plan.delete {
        match client.delete(res, Some(ns), name).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(image: &str) -> Value {
        json!({"metadata": {"name": "db", "namespace": "d", "uid": "s-1",
                "annotations": {"kubernetes.io/change-cause": "set image"}},
            "spec": {"template": {"metadata": {"labels": {"app": "db"}},
                "spec": {"containers": [{"name": "c", "image": image}]}}}})
    }

    fn revision_of(o: &Value, n: i64) -> Arc<Value> {
        let p = plan(o, "StatefulSet", &[], &[]);
        let mut r = p.create.unwrap();
        r["revision"] = json!(n);
        Arc::new(r)
    }

    #[test]
    fn the_first_template_becomes_revision_one() {
        let o = owner("a");
        let p = plan(&o, "StatefulSet", &[], &[]);
        let r = p.create.expect("a revision");
        assert_eq!(r["revision"], 1);
        assert_eq!(r["metadata"]["name"], p.update_revision);
        assert!(p.update_revision.starts_with("db-"));
        assert_eq!(r["metadata"]["labels"]["app"], "db");
        assert_eq!(r["metadata"]["labels"][HASH_LABEL], p.hash);
        assert_eq!(r["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(r["metadata"]["ownerReferences"][0]["kind"], "StatefulSet");
        assert_eq!(
            r["metadata"]["annotations"]["kubernetes.io/change-cause"],
            "set image"
        );
        assert_eq!(r["data"]["spec"]["template"]["$patch"], "replace");
        // the bytes Go's encoder would write for the same template
        assert_eq!(
            r["data"].to_string(),
            r#"{"spec":{"template":{"$patch":"replace","metadata":{"creationTimestamp":null,"labels":{"app":"db"}},"spec":{"containers":[{"image":"a","name":"c","resources":{}}]}}}}"#
        );
        assert_eq!(
            r["data"]["spec"]["template"]["spec"]["containers"][0]["image"],
            "a"
        );
    }

    #[test]
    fn an_unchanged_template_writes_nothing() {
        let o = owner("a");
        let p = plan(&o, "StatefulSet", &[revision_of(&o, 1)], &[]);
        assert_eq!(p.create, None);
        assert_eq!(p.renumber, None);
        assert!(p.delete.is_empty());
    }

    #[test]
    fn a_new_template_gets_the_next_number_and_an_old_one_is_renumbered() {
        let (a, b) = (owner("a"), owner("b"));
        let revs = vec![revision_of(&a, 1), revision_of(&b, 2)];
        let p = plan(&b, "StatefulSet", &revs[..1], &[]);
        assert_eq!(p.create.unwrap()["revision"], 2);
        // rolling back to a: its revision becomes 3, nothing is copied
        let p = plan(&a, "StatefulSet", &revs, &[]);
        assert_eq!(p.create, None);
        assert_eq!(p.renumber, Some((meta::name(&revs[0]).to_string(), 3)));
    }

    #[test]
    fn old_revisions_beyond_the_limit_go_oldest_first_unless_in_use() {
        let mut revs = Vec::new();
        for (i, img) in ["a", "b", "c", "d"].iter().enumerate() {
            revs.push(revision_of(&owner(img), i as i64 + 1));
        }
        let mut o = owner("d");
        o["spec"]["revisionHistoryLimit"] = json!(1);
        let in_use = vec![meta::name(&revs[0]).to_string()];
        let p = plan(&o, "StatefulSet", &revs, &in_use);
        // a is in use, d is current: of b and c, one is kept (c)
        assert_eq!(p.delete, vec![meta::name(&revs[1]).to_string()]);
    }
}
