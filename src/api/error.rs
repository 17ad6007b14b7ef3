//! API errors and their one mapping to HTTP codes and `metav1.Status` JSON.

use serde_json::{json, Value};

/// The kind of a field validation error (Kubernetes `field.ErrorType`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldErrorKind {
    Required,
    Invalid(String),
    NotSupported(String, Vec<String>),
    Duplicate(String),
    Forbidden,
}

/// One invalid field, with the path Kubernetes would name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub kind: FieldErrorKind,
    pub detail: String,
}

impl FieldError {
    pub fn required(field: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            kind: FieldErrorKind::Required,
            detail: String::new(),
        }
    }

    pub fn invalid(
        field: impl Into<String>,
        value: impl ToString,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            kind: FieldErrorKind::Invalid(value.to_string()),
            detail: detail.into(),
        }
    }

    pub fn not_supported(field: impl Into<String>, value: impl ToString, allowed: &[&str]) -> Self {
        Self {
            field: field.into(),
            kind: FieldErrorKind::NotSupported(
                value.to_string(),
                allowed.iter().map(|s| s.to_string()).collect(),
            ),
            detail: String::new(),
        }
    }

    pub fn duplicate(field: impl Into<String>, value: impl ToString) -> Self {
        Self {
            field: field.into(),
            kind: FieldErrorKind::Duplicate(value.to_string()),
            detail: String::new(),
        }
    }

    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            kind: FieldErrorKind::Forbidden,
            detail: detail.into(),
        }
    }

    fn reason(&self) -> &'static str {
        match self.kind {
            FieldErrorKind::Required => "FieldValueRequired",
            FieldErrorKind::Invalid(_) => "FieldValueInvalid",
            FieldErrorKind::NotSupported(..) => "FieldValueNotSupported",
            FieldErrorKind::Duplicate(_) => "FieldValueDuplicate",
            FieldErrorKind::Forbidden => "FieldValueForbidden",
        }
    }

    /// The message without the field path.
    fn body(&self) -> String {
        let with_detail = |s: String| {
            if self.detail.is_empty() {
                s
            } else {
                format!("{s}: {}", self.detail)
            }
        };
        match &self.kind {
            FieldErrorKind::Required => with_detail("Required value".into()),
            FieldErrorKind::Invalid(v) => with_detail(format!("Invalid value: {v:?}")),
            FieldErrorKind::NotSupported(v, allowed) => format!(
                "Unsupported value: {v:?}: supported values: {}",
                allowed
                    .iter()
                    .map(|a| format!("{a:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            FieldErrorKind::Duplicate(v) => format!("Duplicate value: {v:?}"),
            FieldErrorKind::Forbidden => format!("Forbidden: {}", self.detail),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.body())
    }
}

/// An error an API request ends with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{resource} {name:?} not found")]
    NotFound { resource: String, name: String },
    #[error("{resource} {name:?} already exists")]
    AlreadyExists { resource: String, name: String },
    #[error("Operation cannot be fulfilled on {resource} {name:?}: {detail}")]
    Conflict {
        resource: String,
        name: String,
        detail: String,
    },
    #[error("{kind} {name:?} is invalid: {}", join_errors(.errors))]
    Invalid {
        kind: String,
        name: String,
        errors: Vec<FieldError>,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("Unauthorized")]
    Unauthorized,
    #[error("{}", forbidden_message(.resource, .name, .detail))]
    Forbidden {
        resource: String,
        name: String,
        detail: String,
    },
    #[error("{0}")]
    Expired(String),
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    #[error(
        "the body of the request was in an unknown format - accepted media types include: {0}"
    )]
    UnsupportedMediaType(String),
    /// 429: the request is refused for now; `causes` are (reason, message).
    #[error("{message}")]
    TooManyRequests {
        message: String,
        causes: Vec<(String, String)>,
    },
    /// 409 from a server-side apply: fields other managers own; causes are
    /// (message, field).
    #[error("{message}")]
    ApplyConflict {
        message: String,
        causes: Vec<(String, String)>,
    },
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

/// kube-apiserver's wording: `pods "x" is forbidden: …`, `pods is
/// forbidden: …` for collections, `forbidden: …` for non-resource paths.
fn forbidden_message(resource: &str, name: &str, detail: &str) -> String {
    match (resource.is_empty(), name.is_empty()) {
        (true, _) => format!("forbidden: {detail}"),
        (false, true) => format!("{resource} is forbidden: {detail}"),
        (false, false) => format!("{resource} {name:?} is forbidden: {detail}"),
    }
}

fn join_errors(errors: &[FieldError]) -> String {
    match errors {
        [one] => one.to_string(),
        many => format!(
            "[{}]",
            many.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

impl ApiError {
    /// The HTTP status code.
    pub fn code(&self) -> u16 {
        match self {
            ApiError::NotFound { .. } => 404,
            ApiError::AlreadyExists { .. } | ApiError::Conflict { .. } => 409,
            ApiError::Invalid { .. } => 422,
            ApiError::BadRequest(_) => 400,
            ApiError::Unauthorized => 401,
            ApiError::Forbidden { .. } => 403,
            ApiError::Expired(_) => 410,
            ApiError::MethodNotAllowed => 405,
            ApiError::UnsupportedMediaType(_) => 415,
            ApiError::TooManyRequests { .. } => 429,
            ApiError::ApplyConflict { .. } => 409,
            ApiError::Timeout(_) => 504,
            ApiError::Unavailable(_) => 503,
            ApiError::Internal(_) => 500,
        }
    }

    /// The `metav1.StatusReason`.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound { .. } => "NotFound",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } => "Conflict",
            ApiError::Invalid { .. } => "Invalid",
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Unauthorized => "Unauthorized",
            ApiError::Forbidden { .. } => "Forbidden",
            ApiError::Expired(_) => "Expired",
            ApiError::MethodNotAllowed => "MethodNotAllowed",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::TooManyRequests { .. } => "TooManyRequests",
            ApiError::ApplyConflict { .. } => "Conflict",
            ApiError::Timeout(_) => "Timeout",
            ApiError::Unavailable(_) => "ServiceUnavailable",
            ApiError::Internal(_) => "InternalError",
        }
    }

    /// The `metav1.Status` object sent as the response body.
    pub fn to_status(&self) -> Value {
        let details = match self {
            ApiError::NotFound { resource, name }
            | ApiError::AlreadyExists { resource, name }
            | ApiError::Conflict { resource, name, .. }
            | ApiError::Forbidden { resource, name, .. } => {
                let (kind, group) = resource.split_once('.').unwrap_or((resource, ""));
                let mut d = json!({"name": name, "kind": kind});
                if !group.is_empty() {
                    d["group"] = json!(group);
                }
                Some(d)
            }
            ApiError::Invalid { kind, name, errors } => Some(json!({
                "name": name,
                "kind": kind,
                "causes": errors.iter().map(|e| json!({
                    "reason": e.reason(),
                    "message": e.body(),
                    "field": e.field,
                })).collect::<Vec<_>>(),
            })),
            ApiError::TooManyRequests { causes, .. } if !causes.is_empty() => Some(json!({
                "causes": causes.iter().map(|(reason, message)| json!({
                    "reason": reason,
                    "message": message,
                })).collect::<Vec<_>>(),
            })),
            ApiError::ApplyConflict { causes, .. } => Some(json!({
                "causes": causes.iter().map(|(message, field)| json!({
                    "reason": "FieldManagerConflict",
                    "message": message,
                    "field": field,
                })).collect::<Vec<_>>(),
            })),
            _ => None,
        };
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code(),
        });
        if let Some(d) = details {
            status["details"] = d;
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_message_names_every_field() {
        let one = ApiError::Invalid {
            kind: "Pod".into(),
            name: "x".into(),
            errors: vec![FieldError::required("spec.containers[0].image")],
        };
        assert_eq!(
            one.to_string(),
            "Pod \"x\" is invalid: spec.containers[0].image: Required value"
        );
        assert_eq!(one.to_status()["code"], 422);
        assert_eq!(
            one.to_status()["details"]["causes"][0]["field"],
            "spec.containers[0].image"
        );
        let two = ApiError::Invalid {
            kind: "Pod".into(),
            name: "x".into(),
            errors: vec![
                FieldError::required("a"),
                FieldError::not_supported("b", "X", &["Always", "Never"]),
            ],
        };
        assert_eq!(
            two.to_string(),
            "Pod \"x\" is invalid: [a: Required value, b: Unsupported value: \"X\": supported values: \"Always\", \"Never\"]"
        );
    }

    #[test]
    fn not_found_matches_kubernetes_wording() {
        let e = ApiError::NotFound {
            resource: "deployments.apps".into(),
            name: "web".into(),
        };
        assert_eq!(e.to_string(), "deployments.apps \"web\" not found");
        let s = e.to_status();
        assert_eq!(s["reason"], "NotFound");
        assert_eq!(s["details"]["group"], "apps");
        assert_eq!(s["details"]["kind"], "deployments");
    }
}
