//! Turning an HTTP request into what the handlers act on: the target
//! resource from the path, the query parameters, and the decoded body.

use serde::Deserialize;
use serde_json::Value;

use crate::api::fields::FieldValidation;
use crate::api::resources::{self, Resource};
use crate::api::ApiError;

/// What a `/api/...` or `/apis/...` path names.
#[derive(Debug)]
pub enum Target {
    /// `/api/v1` or `/apis/{group}/{version}`: the resource list.
    GroupVersion { group: String, version: String },
    /// `/apis/{group}`: the group.
    Group { group: String },
    /// A collection, an object, or an object's subresource.
    Resource {
        res: &'static Resource,
        namespace: Option<String>,
        name: Option<String>,
        sub: Option<String>,
        /// The deprecated `/watch/` path prefix was used.
        watch_path: bool,
    },
}

fn not_found(path: &str) -> ApiError {
    ApiError::NotFound {
        resource: "".into(),
        name: path.into(),
    }
}

/// Parse a request path.
pub fn parse_path(path: &str) -> Result<Target, ApiError> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, mut rest) = match segs.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group] => {
            return Ok(Target::Group {
                group: group.to_string(),
            })
        }
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(not_found(path)),
    };
    if rest.is_empty() {
        return Ok(Target::GroupVersion {
            group: group.into(),
            version: version.into(),
        });
    }
    let mut watch_path = false;
    if rest[0] == "watch" {
        watch_path = true;
        rest = &rest[1..];
    }
    let lookup = |plural: &str| {
        resources::find(group, version, plural).ok_or_else(|| ApiError::NotFound {
            resource: "".into(),
            name: format!("the server could not find the requested resource ({path})"),
        })
    };
    // /namespaces/{ns}/{plural}[/{name}[/{sub}]], except the namespace's own subresources.
    if let ["namespaces", ns, plural, tail @ ..] = rest {
        if !(group.is_empty() && matches!(*plural, "status" | "finalize") && tail.is_empty()) {
            let res = lookup(plural)?;
            if !res.namespaced {
                return Err(not_found(path));
            }
            let (name, sub) = match tail {
                [] => (None, None),
                [name] => (Some(name.to_string()), None),
                [name, sub] => (Some(name.to_string()), Some(sub.to_string())),
                _ => return Err(not_found(path)),
            };
            return Ok(Target::Resource {
                res,
                namespace: Some(ns.to_string()),
                name,
                sub,
                watch_path,
            });
        }
    }
    let (plural, name, sub) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(name.to_string()), None),
        [plural, name, sub] => (*plural, Some(name.to_string()), Some(sub.to_string())),
        _ => return Err(not_found(path)),
    };
    let res = lookup(plural)?;
    if res.namespaced && name.is_some() {
        return Err(not_found(path));
    }
    Ok(Target::Resource {
        res,
        namespace: None,
        name,
        sub,
        watch_path,
    })
}

/// Query parameters of list, watch, get, create, update, patch and delete.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Params {
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    pub limit: Option<usize>,
    #[serde(rename = "continue")]
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
    pub watch: Option<String>,
    pub allow_watch_bookmarks: Option<String>,
    pub timeout_seconds: Option<u64>,
    pub dry_run: Option<String>,
    pub propagation_policy: Option<String>,
    pub grace_period_seconds: Option<i64>,
    pub field_manager: Option<String>,
    pub force: Option<String>,
    /// With Table responses: None, Metadata (the default) or Object.
    pub include_object: Option<String>,
    /// On writes: Ignore, Warn (the default) or Strict.
    pub field_validation: Option<String>,
}

fn truthy(v: &Option<String>) -> bool {
    matches!(v.as_deref(), Some("true") | Some("1") | Some(""))
}

impl Params {
    /// Parse a raw query string.
    pub fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        serde_urlencoded::from_str(query.unwrap_or_default())
            .map_err(|e| ApiError::BadRequest(format!("invalid query parameters: {e}")))
    }

    /// What to do with unknown and duplicate fields in a write.
    pub fn field_validation(&self) -> Result<FieldValidation, ApiError> {
        FieldValidation::parse(self.field_validation.as_deref())
    }

    pub fn is_watch(&self) -> bool {
        truthy(&self.watch)
    }

    pub fn bookmarks(&self) -> bool {
        truthy(&self.allow_watch_bookmarks)
    }

    pub fn is_dry_run(&self) -> bool {
        self.dry_run.as_deref().is_some_and(|d| d == "All")
    }

    /// `resourceVersion` as a revision; `None` for absent, "" or "0" (any/most recent).
    pub fn revision(&self) -> Result<Option<u64>, ApiError> {
        match self.resource_version.as_deref() {
            None | Some("") | Some("0") => Ok(None),
            Some(s) => s
                .parse()
                .map(Some)
                .map_err(|_| ApiError::BadRequest(format!("invalid resource version: {s:?}"))),
        }
    }
}

/// Decode a request body as JSON, or YAML when the content type says so.
pub fn decode_body(content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Err(ApiError::BadRequest("the request body is empty".into()));
    }
    if super::protobuf::is_protobuf(content_type) {
        return super::protobuf::decode(body);
    }
    let media = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    // what kube-apiserver accepts; no content type at all is taken as JSON
    let yaml = matches!(
        media.as_str(),
        "yaml" | "application/yaml" | "application/x-yaml" | "text/yaml"
    ) || media == "application/apply-patch+yaml";
    let json = matches!(
        media.as_str(),
        "" | "json"
            | "application/json"
            | "*/*"
            | "application/json-patch+json"
            | "application/merge-patch+json"
            | "application/strategic-merge-patch+json"
            | "application/apply-patch+json"
    );
    if !yaml && !json {
        return Err(ApiError::UnsupportedMediaType(format!(
            "application/json, application/yaml, application/vnd.kubernetes.protobuf (not {media})"
        )));
    }
    if yaml {
        let text = std::str::from_utf8(body)
            .map_err(|e| ApiError::BadRequest(format!("body is not UTF-8: {e}")))?;
        serde_saphyr::from_str(text)
            .map_err(|e| ApiError::BadRequest(format!("error decoding YAML: {e}")))
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("error decoding JSON: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(path: &str) -> (String, Option<String>, Option<String>, Option<String>) {
        match parse_path(path).unwrap() {
            Target::Resource {
                res,
                namespace,
                name,
                sub,
                ..
            } => (res.plural.to_string(), namespace, name, sub),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bodies_of_unknown_media_types_are_refused_with_415() {
        let e = decode_body("application/x-www-form-urlencoded", b"a=1").unwrap_err();
        assert_eq!(e.code(), 415);
        assert!(e.to_string().contains("x-www-form-urlencoded"), "{e}");
        assert_eq!(
            decode_body("application/json; charset=utf-8", b"{}").unwrap(),
            serde_json::json!({})
        );
        assert_eq!(decode_body("application/yaml", b"a: 1").unwrap()["a"], 1);
        assert_eq!(decode_body("", b"{}").unwrap(), serde_json::json!({}));
    }

    #[test]
    fn paths_resolve_like_kube_apiserver() {
        assert_eq!(res("/api/v1/pods"), ("pods".into(), None, None, None));
        assert_eq!(
            res("/api/v1/namespaces/default/pods"),
            ("pods".into(), Some("default".into()), None, None)
        );
        assert_eq!(
            res("/api/v1/namespaces/default/pods/a/status"),
            (
                "pods".into(),
                Some("default".into()),
                Some("a".into()),
                Some("status".into())
            )
        );
        assert_eq!(
            res("/api/v1/namespaces/kube-system"),
            ("namespaces".into(), None, Some("kube-system".into()), None)
        );
        assert_eq!(
            res("/api/v1/namespaces/x/finalize"),
            (
                "namespaces".into(),
                None,
                Some("x".into()),
                Some("finalize".into())
            )
        );
        assert_eq!(
            res("/apis/apps/v1/namespaces/d/deployments/w/scale"),
            (
                "deployments".into(),
                Some("d".into()),
                Some("w".into()),
                Some("scale".into())
            )
        );
        assert_eq!(
            res("/api/v1/nodes/n1"),
            ("nodes".into(), None, Some("n1".into()), None)
        );
        assert!(matches!(
            parse_path("/apis/apps/v1"),
            Ok(Target::GroupVersion { .. })
        ));
        assert!(parse_path("/api/v1/widgets").is_err());
        assert!(parse_path("/api/v1/namespaces/d/nodes/x").is_err());
        assert!(parse_path("/api/v1/pods/a").is_err());
    }
}
