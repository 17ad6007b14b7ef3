//! WATCH: newline-delimited JSON events, as kube-apiserver streams them.
//!
//! Each watch runs in its own task with its own cursor into the store's
//! change window, feeding a bounded channel to the HTTP body. A slow client
//! only ever blocks its own task; if it falls out of the window it gets a
//! 410 `Expired` ERROR event and the stream ends, as Kubernetes does.

use std::borrow::Cow;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::api::resources::Resource;
use crate::api::ApiError;
use crate::store::{ChangeKind, Store};

use super::handlers::Filter;
use super::request::Params;

/// Changes read from the window per step.
const BATCH: usize = 512;
/// Default lifetime of a watch without `timeoutSeconds`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// A watch event, serialised from borrowed parts (the `json!` macro would
/// copy the object first).
#[derive(serde::Serialize)]
struct Event<'a> {
    #[serde(rename = "type")]
    event_type: &'a str,
    object: &'a Value,
}

fn json_line(event_type: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&Event { event_type, object }).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// One event as the stream carries it: a JSON line, or a length-prefixed
/// protobuf `WatchEvent`.
fn frame(protobuf: bool, event_type: &str, object: &Value) -> Bytes {
    if protobuf {
        match crate::api::pb::encode_watch_event(event_type, object) {
            Ok(b) => return Bytes::from(b),
            Err(e) => tracing::warn!(error = %e, "watch event has no protobuf encoding"),
        }
    }
    json_line(event_type, object)
}

/// An event's object as the watch shows it: itself, or a one-row Table.
fn shown<'a>(
    res: &'static Resource,
    render: &super::table::Render,
    obj: &'a Value,
) -> Cow<'a, Value> {
    match render {
        super::table::Render::Object | super::table::Render::Protobuf => Cow::Borrowed(obj),
        super::table::Render::Table { version, include } => Cow::Owned(super::table::table(
            res,
            std::slice::from_ref(obj),
            json!({"resourceVersion": obj["metadata"]["resourceVersion"]}),
            version,
            *include,
            true,
        )),
    }
}

/// How often a watch checks that its server still has a Raft leader.
const LEADER_CHECK: Duration = Duration::from_millis(500);
/// Checks without a leader after which a watch ends (about 1.5 s: a few
/// election timeouts at the defaults).
const LEADERLESS_CHECKS: u32 = 3;

/// Start a watch and return the streaming body. With a Table rendering each
/// event's object is a one-row Table (bookmarks and errors stay as they are).
pub fn watch(
    store: &Store,
    res: &'static Resource,
    ns: Option<&str>,
    p: &Params,
    bookmark_interval: Duration,
    mut shutdown: crate::controllers::CancelToken,
    render: super::table::Render,
) -> Result<Body, ApiError> {
    let protobuf = render == super::table::Render::Protobuf;
    let line = move |t: &str, obj: &Value| frame(protobuf, t, obj);
    let filter = Filter::from_params(res, p)?;
    let prefix = res.prefix(ns);
    let start = p.revision()?;
    let bookmarks = p.bookmarks();
    let timeout = p
        .timeout_seconds
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT);
    let cache = store.cache().clone();
    let store = store.clone();

    // Without a resourceVersion: the current state as ADDED events, then changes.
    let (initial, mut cursor) = match start {
        None => {
            let page = cache
                .list(&prefix, None, None, None, &|o| filter.matches(o))
                .map_err(|e| ApiError::Expired(e.to_string()))?;
            (page.items, page.revision)
        }
        Some(rv) => (Vec::new(), rv),
    };

    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(256);
    tokio::spawn(async move {
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        for obj in initial {
            if tx
                .send(Ok(line("ADDED", &shown(res, &render, &obj))))
                .await
                .is_err()
            {
                return;
            }
        }
        // woken by changes of this kind only; the bookmark and leader-check
        // ticks below also move the cursor of a quiet kind's watch along
        // (`changes_in`), so it keeps up with the window
        let mut revisions = cache.subscribe_to(&prefix);
        let mut bookmark = tokio::time::interval(bookmark_interval);
        bookmark.tick().await;
        // a server cut off from the leader gets no more changes: after a
        // few election timeouts without a leader its watches end, and
        // clients watch again (on another server, or here once healed)
        let mut leader_check = tokio::time::interval(LEADER_CHECK);
        leader_check.tick().await;
        let mut leaderless = 0;
        loop {
            let (changes, current) = match cache.changes_in(&revisions, cursor, BATCH) {
                Ok(x) => x,
                Err(e) => {
                    let status = ApiError::Expired(e.to_string()).to_status();
                    let _ = tx.send(Ok(line("ERROR", &status))).await;
                    return;
                }
            };
            let complete = changes.len() < BATCH;
            for c in &changes {
                cursor = c.revision;
                if !c.key.starts_with(&prefix) {
                    continue;
                }
                let now = c.kind != ChangeKind::Deleted && filter.matches(&c.object);
                let before = c.prev.as_deref().is_some_and(|p| filter.matches(p));
                let event = match (c.kind, before, now) {
                    (ChangeKind::Deleted, true, _) => Some("DELETED"),
                    (ChangeKind::Deleted, false, _) => None,
                    (_, true, true) => Some("MODIFIED"),
                    (_, false, true) => Some("ADDED"),
                    (_, true, false) => Some("DELETED"),
                    (_, false, false) => None,
                };
                if let Some(t) = event {
                    if tx
                        .send(Ok(line(t, &shown(res, &render, &c.object))))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
            if complete {
                // Everything up to `current` has been seen.
                cursor = cursor.max(current);
                tokio::select! {
                    changed = revisions.changed() => if changed.is_err() { return },
                    _ = bookmark.tick() => {
                        if bookmarks {
                            let obj = json!({"kind": res.kind, "apiVersion": res.api_version(), "metadata": {"resourceVersion": cursor.to_string()}});
                            if tx.send(Ok(line("BOOKMARK", &obj))).await.is_err() {
                                return;
                            }
                        }
                    }
                    _ = leader_check.tick() => {
                        leaderless = if store.has_leader() { 0 } else { leaderless + 1 };
                        if leaderless >= LEADERLESS_CHECKS {
                            tracing::info!("ending a watch: this server has had no leader for a while");
                            return;
                        }
                    }
                    _ = &mut deadline => return,
                    _ = tx.closed() => return,
                    _ = shutdown.changed() => return,
                }
            }
        }
    });
    Ok(Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ))
}
