//! `meta.k8s.io` Table responses: what a client asking
//! `Accept: application/json;as=Table;v=v1;g=meta.k8s.io` gets for a get,
//! a list or a watch, with kube-apiserver's columns ([`crate::api::printers`])
//! and each row's object as `includeObject` says (None, Metadata, Object).

use serde_json::{json, Value};

use crate::api::printers;
use crate::api::resources::Resource;
use crate::api::ApiError;

/// How a response is rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Render {
    /// The objects themselves.
    Object,
    /// The objects themselves, in Kubernetes protobuf.
    Protobuf,
    /// A Table of `meta.k8s.io/VERSION`, rows carrying what `include` says.
    Table {
        version: &'static str,
        include: Include,
    },
}

/// `includeObject`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Include {
    None,
    Metadata,
    Object,
}

/// The rendering an `Accept` header asks for (the first acceptable type wins,
/// as kube-apiserver negotiates).
pub fn negotiate(accept: Option<&str>, include_object: Option<&str>) -> Result<Render, ApiError> {
    let include = match include_object.unwrap_or("Metadata") {
        "None" => Include::None,
        "Metadata" | "" => Include::Metadata,
        "Object" => Include::Object,
        other => {
            return Err(ApiError::BadRequest(format!(
                "includeObject {other:?} is not one of None, Metadata, Object"
            )))
        }
    };
    let Some(accept) = accept else {
        return Ok(Render::Object);
    };
    for part in accept.split(',') {
        let mut params = part.split(';').map(str::trim);
        let media = params.next().unwrap_or_default();
        let (mut as_, mut v, mut g) = ("", "", "");
        for p in params {
            match p.split_once('=') {
                Some(("as", x)) => as_ = x,
                Some(("v", x)) => v = x,
                Some(("g", x)) => g = x,
                _ => {}
            }
        }
        if as_ == "Table" && g == "meta.k8s.io" && matches!(media, "application/json" | "*/*") {
            match v {
                "v1" => {
                    return Ok(Render::Table {
                        version: "v1",
                        include,
                    })
                }
                "v1beta1" => {
                    return Ok(Render::Table {
                        version: "v1beta1",
                        include,
                    })
                }
                _ => continue,
            }
        }
        if as_.is_empty() && media == super::protobuf::CONTENT_TYPE {
            return Ok(Render::Protobuf);
        }
        if as_.is_empty()
            && matches!(
                media,
                "application/json" | "*/*" | "application/yaml" | "application/json;stream=watch"
            )
        {
            return Ok(Render::Object);
        }
    }
    Ok(Render::Object)
}

fn column_definitions(res: &Resource) -> Value {
    json!(printers::columns(res)
        .iter()
        .map(|c| json!({"name": c.name, "type": c.ty, "format": c.format,
            "description": c.description, "priority": c.priority}))
        .collect::<Vec<_>>())
}

fn row(res: &Resource, obj: &Value, include: Include, version: &str) -> Value {
    let mut r = json!({"cells": printers::cells(res, obj)});
    match include {
        Include::None => {}
        Include::Metadata => {
            r["object"] = json!({"kind": "PartialObjectMetadata",
                "apiVersion": format!("meta.k8s.io/{version}"), "metadata": obj["metadata"]});
        }
        Include::Object => r["object"] = obj.clone(),
    }
    r
}

/// A Table of `objects` with the list metadata `metadata`.
pub fn table(
    res: &Resource,
    objects: &[Value],
    metadata: Value,
    version: &str,
    include: Include,
    headers: bool,
) -> Value {
    json!({
        "kind": "Table",
        "apiVersion": format!("meta.k8s.io/{version}"),
        "metadata": metadata,
        "columnDefinitions": if headers { column_definitions(res) } else { json!([]) },
        "rows": objects.iter().map(|o| row(res, o, include, version)).collect::<Vec<_>>(),
    })
}

/// A list or a single object rendered as a Table.
pub fn render(res: &Resource, v: Value, version: &str, include: Include) -> Value {
    if v.get("items").is_some_and(Value::is_array) {
        let meta = v["metadata"].clone();
        let items = v["items"].as_array().cloned().unwrap_or_default();
        table(res, &items, meta, version, include, true)
    } else {
        let meta = json!({"resourceVersion": v["metadata"]["resourceVersion"]});
        table(res, std::slice::from_ref(&v), meta, version, include, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resources::lookup;

    #[test]
    fn kubectls_accept_header_gets_a_table() {
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(
            negotiate(Some(kubectl), None).unwrap(),
            Render::Table {
                version: "v1",
                include: Include::Metadata
            }
        );
        let beta = "application/json;as=Table;v=v1beta1;g=meta.k8s.io, application/json";
        assert!(matches!(
            negotiate(Some(beta), Some("Object")).unwrap(),
            Render::Table {
                version: "v1beta1",
                include: Include::Object
            }
        ));
        assert_eq!(
            negotiate(Some("application/json"), None).unwrap(),
            Render::Object
        );
        assert_eq!(negotiate(None, None).unwrap(), Render::Object);
        assert!(negotiate(Some(kubectl), Some("Everything")).is_err());
    }

    #[test]
    fn a_list_becomes_rows_with_partial_metadata() {
        let list = json!({"metadata": {"resourceVersion": "7"}, "items": [
            {"metadata": {"name": "a", "labels": {"x": "y"}, "creationTimestamp": "2026-01-01T00:00:00Z"}, "data": {"k": "v"}}]});
        let t = render(lookup("configmaps").unwrap(), list, "v1", Include::Metadata);
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["metadata"]["resourceVersion"], "7");
        assert_eq!(t["columnDefinitions"][1]["name"], "Data");
        assert_eq!(t["rows"][0]["cells"][0], "a");
        assert_eq!(t["rows"][0]["cells"][1], 1);
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["rows"][0]["object"]["metadata"]["labels"]["x"], "y");
    }
}
