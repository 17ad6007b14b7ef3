//! Recording core/v1 Events with aggregation: a repeat of the same event
//! (same object, type, reason and message) bumps `count` and
//! `lastTimestamp` on one Event instead of creating another, as client-go's
//! event recorder does.

use std::sync::{Arc, OnceLock};

use futures::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{Client, ClientError};
use crate::api::meta;

/// How many events may wait to be written before new ones are dropped
/// (client-go's broadcaster keeps 1,000 and drops past that too).
const QUEUE: usize = 1000;

/// How many queued events are written at once.
const WRITERS: usize = 8;

/// An event ready to be written: where, its stable name, the object, and
/// when it happened.
struct Pending {
    path: String,
    name: String,
    event: Value,
    now: String,
}

/// Records events about objects.
///
/// [`Recorder::emit`] queues an event and returns at once: events are
/// best-effort reports, and a container start or a scheduling decision
/// does not wait for one to be stored, as with client-go's broadcaster.
/// [`Recorder::record`] writes one and returns the result.
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    /// `source.component` of every event (e.g. `namespace-controller`).
    component: String,
    /// The queue of [`Recorder::emit`], started on first use.
    queue: Arc<OnceLock<mpsc::Sender<Pending>>>,
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
            queue: Arc::default(),
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
        write(&self.client, self.pending(obj, event_type, reason, message)).await
    }

    /// Queue an event of `event_type` about `obj`, stamped now, and return
    /// at once. Written in the background; dropped (and logged) if the
    /// queue is full or there is no runtime to write it from.
    pub fn emit(&self, obj: &Value, event_type: &str, reason: &str, message: &str) {
        let pending = self.pending(obj, event_type, reason, message);
        let Some(tx) = self.sender() else {
            tracing::debug!(reason, "no runtime to record an event from");
            return;
        };
        match tx.try_send(pending) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(p)) => {
                tracing::warn!(event = %p.name, reason, "event queue full, dropping the event");
            }
            Err(mpsc::error::TrySendError::Closed(p)) => {
                tracing::debug!(event = %p.name, reason, "runtime shutting down, dropping the event");
            }
        }
    }

    /// The queue's sender, starting its writer on first use.
    fn sender(&self) -> Option<&mpsc::Sender<Pending>> {
        if let Some(tx) = self.queue.get() {
            return Some(tx);
        }
        let handle = tokio::runtime::Handle::try_current().ok()?;
        Some(self.queue.get_or_init(|| {
            let (tx, mut rx) = mpsc::channel::<Pending>(QUEUE);
            let client = self.client.clone();
            handle.spawn(async move {
                futures::stream::poll_fn(|cx| rx.poll_recv(cx))
                    .for_each_concurrent(WRITERS, |p| {
                        let client = client.clone();
                        async move {
                            let name = p.name.clone();
                            if let Err(e) = write(&client, p).await {
                                tracing::debug!(event = %name, error = %e, "recording an event");
                            }
                        }
                    })
                    .await
            });
            tx
        }))
    }

    /// The Event object for `obj`, named and stamped now.
    fn pending(&self, obj: &Value, event_type: &str, reason: &str, message: &str) -> Pending {
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
        Pending {
            path,
            name,
            event,
            now,
        }
    }
}

/// Create the event, or if it was seen before, count it again.
async fn write(client: &Client, p: Pending) -> Result<Value, ClientError> {
    let Pending {
        path,
        name,
        event,
        now,
    } = p;
    match client.request(Method::POST, &path, Some(&event)).await {
        Err(e) if e.code() == Some(409) => {
            // Seen before: aggregate (retrying if another writer raced us).
            loop {
                let current = client
                    .request(Method::GET, &format!("{path}/{name}"), None)
                    .await?;
                let mut next = current.clone();
                next["count"] = json!(current["count"].as_i64().unwrap_or(1) + 1);
                next["lastTimestamp"] = json!(now);
                match client
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
