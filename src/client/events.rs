//! Recording core/v1 Events with aggregation: a repeat of the same event
//! (same object, type, reason and message) bumps `count` and
//! `lastTimestamp` on one Event instead of creating another, as client-go's
//! event recorder does.

use reqwest::Method;
use serde_json::{json, Value};

use super::{Client, ClientError};
use crate::api::meta;

/// Records events about objects.
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    /// `source.component` of every event (e.g. `namespace-controller`).
    component: String,
}

/// A stable name for an event: the object's name plus a hash of what makes it the same event.
fn event_name(obj_name: &str, uid: &str, event_type: &str, reason: &str, message: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (uid, event_type, reason, message).hash(&mut h);
    format!("{obj_name}.{:016x}", h.finish())
}

impl Recorder {
    pub fn new(client: Client, component: impl Into<String>) -> Self {
        Self {
            client,
            component: component.into(),
        }
    }

    /// Record an event of `event_type` (`Normal`/`Warning`) about `obj`.
    pub async fn record(
        &self,
        obj: &Value,
        event_type: &str,
        reason: &str,
        message: &str,
    ) -> Result<Value, ClientError> {
        let ns = match meta::namespace(obj) {
            "" => "default",
            ns => ns,
        };
        let uid = obj
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let name = event_name(meta::name(obj), uid, event_type, reason, message);
        let now = meta::now();
        let path = format!("/api/v1/namespaces/{ns}/events");
        let event = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": ns},
            "involvedObject": {
                "apiVersion": obj["apiVersion"],
                "kind": obj["kind"],
                "name": meta::name(obj),
                "namespace": meta::namespace(obj),
                "uid": uid,
                "resourceVersion": meta::resource_version(obj),
            },
            "reason": reason,
            "message": message,
            "type": event_type,
            "source": {"component": self.component},
            "reportingComponent": self.component,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        });
        match self.client.request(Method::POST, &path, Some(&event)).await {
            Err(e) if e.code() == Some(409) => {
                // Seen before: aggregate (retrying if another writer raced us).
                loop {
                    let current = self
                        .client
                        .request(Method::GET, &format!("{path}/{name}"), None)
                        .await?;
                    let mut next = current.clone();
                    next["count"] = json!(current["count"].as_i64().unwrap_or(1) + 1);
                    next["lastTimestamp"] = json!(now);
                    match self
                        .client
                        .request(Method::PUT, &format!("{path}/{name}"), Some(&next))
                        .await
                    {
                        Err(e) if e.code() == Some(409) => continue,
                        other => return other,
                    }
                }
            }
            other => other,
        }
    }
}
