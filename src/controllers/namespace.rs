//! Namespace lifecycle: a namespace marked for deletion has everything in it
//! deleted, then its `kubernetes` finalizer is cleared through
//! `namespaces/{name}/finalize`, which removes it.
//!
//! Level-triggered: every pass looks at all terminating namespaces; passes
//! run whenever a namespace changes, and at least every few seconds while
//! one is still terminating (objects with finalizers may take time).

use std::time::Duration;

use futures::StreamExt;
use reqwest::Method;
use serde_json::json;

use super::CancelToken;

use crate::api::meta;
use crate::api::resources;
use crate::client::{Client, ClientError};

/// What to do with one terminating namespace, decided from what is left in it.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Delete these collections (plural paths) in the namespace.
    DeleteContent(Vec<String>),
    /// Nothing is left: clear the finalizer.
    Finalize,
}

/// Decide the next step from how many objects remain per resource collection path.
pub fn plan(remaining: &[(String, usize)]) -> Step {
    let left: Vec<String> = remaining
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(p, _)| p.clone())
        .collect();
    if left.is_empty() {
        Step::Finalize
    } else {
        Step::DeleteContent(left)
    }
}

async fn reconcile(client: &Client, ns: &str) -> Result<bool, ClientError> {
    let mut remaining = Vec::new();
    // the custom resources of this server's CRDs too
    for res in resources::all()
        .into_iter()
        .filter(|r| r.namespaced && !r.review)
    {
        let list = client.list(res, Some(ns), "").await?;
        remaining.push((
            res.collection_path(Some(ns)),
            list["items"].as_array().map_or(0, Vec::len),
        ));
    }
    match plan(&remaining) {
        Step::DeleteContent(paths) => {
            for path in paths {
                client.request(Method::DELETE, &path, None).await?;
            }
            Ok(false)
        }
        Step::Finalize => {
            let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}, "spec": {"finalizers": []}});
            match client
                .request(
                    Method::PUT,
                    &format!("/api/v1/namespaces/{ns}/finalize"),
                    Some(&body),
                )
                .await
            {
                Err(e) if e.is_not_found() => Ok(true),
                Err(e) => Err(e),
                Ok(_) => Ok(true),
            }
        }
    }
}

/// Run until `cancel` turns true.
pub async fn run(client: Client, mut cancel: CancelToken) {
    let namespaces = resources::lookup("namespaces").expect("namespaces are served");
    loop {
        let mut pending = false;
        let rv = match client.list(namespaces, None, "").await {
            Ok(list) => {
                for ns in list["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|n| meta::is_deleting(n))
                {
                    match reconcile(&client, meta::name(ns)).await {
                        Ok(done) => pending |= !done,
                        Err(e) => {
                            pending = true;
                            tracing::warn!(namespace = meta::name(ns), error = %e, "namespace cleanup");
                        }
                    }
                }
                list["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            }
            Err(e) => {
                tracing::debug!(error = %e, "listing namespaces");
                pending = true;
                String::new()
            }
        };
        let wait = if pending { 1 } else { 30 };
        let woke = async {
            if let Ok(stream) = client
                .watch(
                    namespaces,
                    None,
                    &format!("resourceVersion={rv}&timeoutSeconds={wait}"),
                )
                .await
            {
                let mut stream = std::pin::pin!(stream);
                // Any change to a namespace is a reason to look again.
                let _ = stream.next().await;
            } else {
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
        };
        tokio::select! {
            _ = woke => {}
            _ = cancel.changed() => return,
        }
        if *cancel.borrow() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finalizes_only_when_everything_is_gone() {
        assert_eq!(plan(&[("a".into(), 0), ("b".into(), 0)]), Step::Finalize);
        assert_eq!(
            plan(&[("a".into(), 2), ("b".into(), 0)]),
            Step::DeleteContent(vec!["a".into()])
        );
    }
}
