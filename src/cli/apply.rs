//! `wkctl apply -f`: create what is missing, patch what changed (three-way,
//! from the last-applied annotation, so removed fields are removed), and say
//! which, like kubectl.

use serde_json::{json, Map, Value};

use super::{manifest, ref_name, CliError, Context};
use crate::api::resources;

/// The annotation holding the configuration last applied.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

#[derive(clap::Args)]
pub struct Apply {
    /// Files, directories or `-` for stdin.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<String>,
}

/// A JSON merge patch that turns `old` into `new`: keys only in `old` become null.
pub fn merge_diff(old: &Value, new: &Value) -> Value {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut out = Map::new();
            for (k, v) in n {
                out.insert(
                    k.clone(),
                    match o.get(k) {
                        Some(ov) => merge_diff(ov, v),
                        None => v.clone(),
                    },
                );
            }
            for k in o.keys() {
                if !n.contains_key(k) {
                    out.insert(k.clone(), Value::Null);
                }
            }
            Value::Object(out)
        }
        (_, n) => n.clone(),
    }
}

impl Apply {
    pub async fn execute(&self, ctx: &Context) -> Result<(), CliError> {
        let (docs, errors) = manifest::read(&self.files);
        let mut failed = !errors.is_empty();
        for e in &errors {
            eprintln!("{e}");
        }
        for doc in docs {
            let v = &doc.value;
            let api_version = v["apiVersion"].as_str().unwrap_or_default();
            let kind = v["kind"].as_str().unwrap_or_default();
            let where_ = format!("{} (document {}, line {})", doc.source, doc.index, doc.line);
            if kind.is_empty() || api_version.is_empty() {
                eprintln!("error: {where_}: Object 'Kind' is missing or 'apiVersion' is not set");
                failed = true;
                continue;
            }
            let Some(res) = resources::find_kind(api_version, kind) else {
                eprintln!("error: resource mapping not found for name: {:?} from {where_}: no matches for kind {kind:?} in version {api_version:?}", super::name_of(v));
                failed = true;
                continue;
            };
            let name = super::name_of(v).to_string();
            if name.is_empty() {
                eprintln!("error: {where_}: metadata.name: Required value");
                failed = true;
                continue;
            }
            let ns = if res.namespaced {
                Some(
                    v.pointer("/metadata/namespace")
                        .and_then(Value::as_str)
                        .unwrap_or(&ctx.namespace)
                        .to_string(),
                )
            } else {
                None
            };
            let mut desired = v.clone();
            if let Some(m) = desired.get_mut("metadata").and_then(Value::as_object_mut) {
                if let Some(a) = m.get_mut("annotations").and_then(Value::as_object_mut) {
                    a.remove(LAST_APPLIED);
                }
            }
            let applied = serde_json::to_string(&desired).unwrap_or_default();
            let mut with_annotation = desired.clone();
            with_annotation["metadata"]["annotations"][LAST_APPLIED] = json!(applied);
            let outcome = match ctx.client.get(res, ns.as_deref(), &name).await {
                Err(e) if e.is_not_found() => ctx
                    .client
                    .create(res, ns.as_deref(), &with_annotation)
                    .await
                    .map(|_| "created"),
                Err(e) => Err(e),
                Ok(current) => {
                    let last: Value = current
                        .pointer(&format!(
                            "/metadata/annotations/{}",
                            LAST_APPLIED.replace('/', "~1")
                        ))
                        .and_then(Value::as_str)
                        .and_then(|s| serde_json::from_str(s).ok())
                        .unwrap_or(json!({}));
                    let patch = merge_diff(&last, &with_annotation);
                    // unchanged when what the config owns (spec, data, labels,
                    // its own annotation) is the same afterwards, whatever
                    // controllers write to status or annotations meanwhile
                    let owned = |o: &Value| {
                        (
                            crate::api::meta::spec_part(o),
                            o["metadata"]["labels"].clone(),
                            o["metadata"]["annotations"][LAST_APPLIED].clone(),
                        )
                    };
                    ctx.client
                        .merge_patch(res, ns.as_deref(), &name, &patch)
                        .await
                        .map(|updated| {
                            if owned(&updated) == owned(&current) {
                                "unchanged"
                            } else {
                                "configured"
                            }
                        })
                }
            };
            match outcome {
                Ok(word) => println!("{} {word}", ref_name(res, &name)),
                Err(e) => {
                    eprintln!("{e}");
                    failed = true;
                }
            }
        }
        if failed {
            Err(CliError::Reported)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_diff_removes_fields_dropped_from_the_manifest() {
        let old = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "data": {"x": "1"}});
        let new = json!({"metadata": {"labels": {"a": "1"}}, "data": {"y": "2"}});
        assert_eq!(
            merge_diff(&old, &new),
            json!({"metadata": {"labels": {"a": "1", "b": null}}, "data": {"y": "2", "x": null}})
        );
    }
}
