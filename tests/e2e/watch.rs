//! Watch semantics: resume from a resourceVersion, selectors turning
//! modifications into ADDED/DELETED, 410 Expired, bookmarks, many watchers.

use std::time::Duration;

use futures::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};

use crate::util::{configmap, Server};

const CM: &str = "/api/v1/namespaces/default/configmaps";

/// An open watch stream yielding parsed events.
pub(crate) struct Watch {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl Watch {
    pub(crate) async fn open(s: &Server, query: &str) -> Watch {
        let resp = s
            .http
            .get(format!("{}{CM}?watch=true&{query}", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        Watch {
            resp,
            buf: Vec::new(),
        }
    }

    /// The next event, or None when the stream ends or `secs` pass.
    pub(crate) async fn next(&mut self, secs: u64) -> Option<(String, Value)> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let v: Value = serde_json::from_slice(&line).expect("event is JSON");
                return Some((v["type"].as_str().unwrap().to_string(), v["object"].clone()));
            }
            match tokio::time::timeout(Duration::from_secs(secs), self.resp.chunk()).await {
                Ok(Ok(Some(c))) => self.buf.extend_from_slice(&c),
                _ => return None,
            }
        }
    }

    async fn expect(&mut self, ty: &str, name: &str) -> Value {
        let (t, o) = self
            .next(10)
            .await
            .unwrap_or_else(|| panic!("no event; wanted {ty} {name}"));
        assert_eq!(
            (
                t.as_str(),
                o["metadata"]["name"].as_str().unwrap_or_default()
            ),
            (ty, name),
            "{o}"
        );
        o
    }
}

fn rv(v: &Value) -> String {
    v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn merge(s: &Server, name: &str, patch: Value) -> Value {
    s.call_as(
        Method::PATCH,
        &format!("{CM}/{name}"),
        Some(patch),
        "application/merge-patch+json",
    )
    .await
    .1
}

#[tokio::test]
async fn watch_resumes_from_a_revision_and_selectors_shape_events() {
    let s = Server::start().await;
    let mut a = configmap("a", "1");
    a["metadata"]["labels"] = json!({"app": "x"});
    let (_, a) = s.call(Method::POST, CM, Some(a)).await;
    s.call(Method::POST, CM, Some(configmap("b", "1"))).await;
    let mut w = Watch::open(
        &s,
        &format!("resourceVersion={}&labelSelector=app%3Dx", rv(&a)),
    )
    .await;
    merge(&s, "a", json!({"data": {"v": "2"}})).await; // MODIFIED
    merge(&s, "b", json!({"metadata": {"labels": {"app": "x"}}})).await; // enters the selection: ADDED
    merge(&s, "a", json!({"metadata": {"labels": {"app": null}}})).await; // leaves it: DELETED
    s.call(Method::DELETE, &format!("{CM}/b"), None).await; // DELETED
    s.call(Method::POST, CM, Some(configmap("c", "1"))).await; // not selected
    let m = w.expect("MODIFIED", "a").await;
    assert_eq!(m["data"]["v"], "2");
    w.expect("ADDED", "b").await;
    w.expect("DELETED", "a").await;
    let d = w.expect("DELETED", "b").await;
    assert!(
        rv(&d).parse::<u64>().unwrap() > rv(&m).parse::<u64>().unwrap(),
        "a deletion carries its own revision"
    );
    assert!(
        w.next(1).await.is_none(),
        "unselected objects produce no events"
    );
}

#[tokio::test]
async fn watch_without_a_revision_starts_with_the_current_state() {
    let s = Server::start().await;
    s.call(Method::POST, CM, Some(configmap("one", "1"))).await;
    s.call(Method::POST, CM, Some(configmap("two", "1"))).await;
    let mut w = Watch::open(&s, "").await;
    // the namespace's CA bundle, in key order, as every namespace has one
    w.expect("ADDED", "kube-root-ca.crt").await;
    w.expect("ADDED", "one").await;
    w.expect("ADDED", "two").await;
    s.call(Method::POST, CM, Some(configmap("three", "1")))
        .await;
    w.expect("ADDED", "three").await;
}

#[tokio::test]
async fn watch_from_a_revision_older_than_the_window_gets_410_expired() {
    let s = Server::builder()
        .arg("--watch-history")
        .arg("5")
        .start()
        .await;
    let (_, first) = s.call(Method::POST, CM, Some(configmap("c0", "1"))).await;
    for i in 1..10 {
        s.call(Method::POST, CM, Some(configmap(&format!("c{i}"), "1")))
            .await;
    }
    let mut w = Watch::open(&s, &format!("resourceVersion={}", rv(&first))).await;
    let (t, status) = w.next(10).await.unwrap();
    assert_eq!(t, "ERROR");
    assert_eq!(status["code"], 410);
    assert_eq!(status["reason"], "Expired");
    assert!(w.next(2).await.is_none(), "the stream ends after the error");
    // a list continuation from that far back is expired too
    let (_, page) = s.call(Method::GET, &format!("{CM}?limit=2"), None).await;
    let token = page["metadata"]["continue"].as_str().unwrap().to_string();
    for i in 10..20 {
        s.call(Method::POST, CM, Some(configmap(&format!("c{i}"), "1")))
            .await;
    }
    let (code, st) = s
        .call(Method::GET, &format!("{CM}?limit=2&continue={token}"), None)
        .await;
    assert_eq!(code, 410, "{st}");
    assert_eq!(st["reason"], "Expired");
}

#[tokio::test]
async fn idle_watches_that_ask_get_bookmarks() {
    let s = Server::builder()
        .arg("--bookmark-interval")
        .arg("0.2")
        .start()
        .await;
    let (_, a) = s.call(Method::POST, CM, Some(configmap("a", "1"))).await;
    let mut w = Watch::open(
        &s,
        &format!("resourceVersion={}&allowWatchBookmarks=true", rv(&a)),
    )
    .await;
    let (t, o) = w.next(5).await.unwrap();
    assert_eq!(t, "BOOKMARK");
    assert_eq!(o["kind"], "ConfigMap");
    assert!(
        o["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= rv(&a).parse::<u64>().unwrap()
    );
    let mut quiet = Watch::open(&s, &format!("resourceVersion={}", rv(&a))).await;
    assert!(quiet.next(1).await.is_none(), "no bookmarks unless asked");
}

#[tokio::test]
async fn many_watchers_each_see_every_write_in_order() {
    let s = Server::start().await;
    let (_, start) = s
        .call(Method::POST, CM, Some(configmap("start", "1")))
        .await;
    let mut watchers = Vec::new();
    for _ in 0..50 {
        watchers.push(Watch::open(&s, &format!("resourceVersion={}", rv(&start))).await);
    }
    // one watcher that never reads must not hold the writers back
    let _stalled = Watch::open(&s, &format!("resourceVersion={}", rv(&start))).await;
    let writes: Vec<_> = (0..100)
        .map(|i| {
            let url = s.url.clone();
            let http = s.http.clone();
            tokio::spawn(async move {
                let r = http
                    .post(format!("{url}{CM}"))
                    .json(&configmap(&format!("w{i:03}"), "1"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 201);
            })
        })
        .collect();
    for w in futures::future::join_all(writes).await {
        w.unwrap();
    }
    let results = futures::stream::iter(watchers.iter_mut())
        .then(|w| async move {
            let mut revs = Vec::new();
            while revs.len() < 100 {
                let (t, o) = w.next(10).await.expect("event");
                assert_eq!(t, "ADDED");
                revs.push(rv(&o).parse::<u64>().unwrap());
            }
            revs
        })
        .collect::<Vec<_>>()
        .await;
    for revs in &results {
        assert!(
            revs.windows(2).all(|p| p[0] < p[1]),
            "events arrive in revision order"
        );
        assert_eq!(revs, &results[0], "every watcher sees the same sequence");
    }
}
