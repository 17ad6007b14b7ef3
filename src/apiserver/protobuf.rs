//! Kubernetes protobuf at the HTTP edge (`application/vnd.kubernetes.protobuf`):
//! request bodies decoded with the generic codec of `api::pb`, and
//! responses encoded with it when the client asks for protobuf first.
//! kubectl and client-go send protobuf for typed calls (`create configmap`,
//! `drain`'s evictions and deletions, `auth can-i`, `create token`).
//!
//! A protobuf body of a kind the table does not know gets 415 naming what
//! to send instead, never a JSON parse error; a response of such a kind
//! (a custom resource) falls back to JSON, which every client also accepts.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::api::pb::{self, PbError};
use crate::api::ApiError;

pub use crate::api::pb::CONTENT_TYPE;

/// Whether a content type is Kubernetes protobuf.
pub fn is_protobuf(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim() == CONTENT_TYPE)
}

/// Decode a protobuf request body into the object's JSON.
pub fn decode(bytes: &[u8]) -> Result<Value, ApiError> {
    pb::decode_object(bytes).map_err(|e| match e {
        PbError::UnknownKind(what) => ApiError::UnsupportedMediaType(format!(
            "application/json, application/yaml ({CONTENT_TYPE} is accepted for the built-in kinds; {what} has no protobuf encoding: send it as JSON)"
        )),
        other => ApiError::BadRequest(format!("error decoding protobuf: {other}")),
    })
}

/// A protobuf response, or JSON when the object's kind has no protobuf
/// encoding.
pub fn respond(code: StatusCode, v: &Value) -> Response {
    match pb::encode_object(v) {
        Ok(bytes) => (code, [(header::CONTENT_TYPE, CONTENT_TYPE)], bytes).into_response(),
        Err(e) => {
            tracing::debug!(error = %e, "answering JSON instead of protobuf");
            (code, axum::Json(v)).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_pb::api::authorization::v1 as authz;
    use k8s_pb::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
    use prost::Message;

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
        let mut out = pb::MAGIC.to_vec();
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
    fn unknown_kinds_and_garbage_are_refused_clearly() {
        let e = decode(&wrap("example.com/v1", "Widget", vec![])).unwrap_err();
        assert_eq!(e.code(), 415);
        assert!(e.to_string().contains("example.com/v1 Widget"), "{e}");
        assert_eq!(decode(b"{\"json\": true}").unwrap_err().code(), 400);
    }

    #[test]
    fn responses_fall_back_to_json_for_kinds_without_protobuf() {
        let r = respond(
            StatusCode::OK,
            &serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}),
        );
        assert_eq!(r.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        let r = respond(
            StatusCode::OK,
            &serde_json::json!({"apiVersion": "example.com/v1", "kind": "Widget"}),
        );
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
    }
}
