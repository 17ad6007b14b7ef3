//! Warnings a request collects on its way through the handlers, returned
//! as `Warning: 299 - "..."` headers (kube-apiserver's warning recorder).
//! They live in a task-local for the request, so a handler deep in the
//! call chain adds one without threading a collector through every call.

use std::cell::RefCell;
use std::future::Future;

use axum::http::{HeaderValue, Response};

tokio::task_local! {
    static WARNINGS: RefCell<Vec<String>>;
    static AUDIT: RefCell<Vec<(String, String)>>;
}

/// Annotations for a request's audit event (as kube-apiserver's admission
/// plugins add them), carried to the audit log on the response.
#[derive(Debug, Clone, Default)]
pub struct AuditAnnotations(pub Vec<(String, String)>);

/// Run `f` collecting the warnings and audit annotations it adds.
pub async fn scope<F: Future>(f: F) -> (F::Output, Vec<String>, AuditAnnotations) {
    let mut out = None;
    let (warnings, audit) = WARNINGS
        .scope(
            RefCell::new(Vec::new()),
            AUDIT.scope(RefCell::new(Vec::new()), async {
                out = Some(f.await);
                (
                    WARNINGS.with(|w| std::mem::take(&mut *w.borrow_mut())),
                    AUDIT.with(|a| std::mem::take(&mut *a.borrow_mut())),
                )
            }),
        )
        .await;
    (
        out.expect("the scoped future ran"),
        warnings,
        AuditAnnotations(audit),
    )
}

/// Add an annotation to the current request's audit event.
pub fn annotate_audit(key: &str, value: impl Into<String>) {
    let value = value.into();
    let _ = AUDIT.try_with(|a| a.borrow_mut().push((key.to_string(), value)));
}

/// Add a warning to the current request (once; outside a request scope it
/// is logged instead).
pub fn add(message: impl Into<String>) {
    let message = message.into();
    if WARNINGS
        .try_with(|w| {
            let mut w = w.borrow_mut();
            if !w.contains(&message) {
                w.push(message.clone());
            }
        })
        .is_err()
    {
        tracing::debug!(%message, "warning outside a request");
    }
}

/// Put the warnings on a response, as RFC 7234 warning headers with code
/// 299 and the agent `-`.
pub fn attach<B>(resp: &mut Response<B>, warnings: &[String]) {
    for w in warnings {
        let text = format!("299 - {}", serde_json::Value::String(w.clone()));
        // quotes inside are escaped by the JSON form; other bytes a header
        // cannot hold are dropped rather than failing the response
        let text: String = text.chars().filter(|c| (' '..='~').contains(c)).collect();
        if let Ok(v) = HeaderValue::from_str(&text) {
            resp.headers_mut().append("warning", v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn warnings_added_in_a_scope_come_out_once_each() {
        let ((), w, audit) = scope(async {
            add("unknown field \"x\"");
            tokio::task::yield_now().await;
            add("unknown field \"x\"");
            add("second");
            annotate_audit("k", "v");
        })
        .await;
        assert_eq!(w, vec!["unknown field \"x\"", "second"]);
        assert_eq!(audit.0, vec![("k".to_string(), "v".to_string())]);
        let mut resp = Response::new(());
        attach(&mut resp, &w);
        let h: Vec<_> = resp.headers().get_all("warning").iter().collect();
        assert_eq!(h[0], "299 - \"unknown field \\\"x\\\"\"");
        assert_eq!(h.len(), 2);
        add("outside"); // does not panic
    }
}
