//! Deployments end to end: a rolling update watched pod by pod stays within
//! maxSurge and maxUnavailable; a rollout to a broken image stalls, says so,
//! and `rollout undo` restores the old version; scaling 0 → 50 → 5; a
//! cascading delete removes ReplicaSets and pods.

use futures::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};

use crate::controllers::{live_pods, template};
use crate::util::{eventually, stderr, stdout, Server};

const DEPLOYS: &str = "/apis/apps/v1/namespaces/default/deployments";
const RSS: &str = "/apis/apps/v1/namespaces/default/replicasets";

fn deployment(name: &str, replicas: i64) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "progressDeadlineSeconds": 5,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": template(name, "1")}})
}

fn ready(p: &Value) -> bool {
    p["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn rollout_status(s: &Server, name: &str) -> std::process::Output {
    s.wkctl(&[
        "rollout",
        "status",
        &format!("deployment/{name}"),
        "--timeout",
        "90",
    ])
}

async fn versions(s: &Server, app: &str) -> Vec<String> {
    let mut v: Vec<String> = live_pods(s, app)
        .await
        .iter()
        .map(|p| {
            p["metadata"]["annotations"]["version"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn a_rolling_update_keeps_availability_and_a_broken_rollout_is_undone() {
    let s = Server::start().await;
    let (code, body) = s
        .call(Method::POST, DEPLOYS, Some(deployment("web", 3)))
        .await;
    assert_eq!(code, 201, "{body}");
    let out = rollout_status(&s, "web");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).ends_with("deployment \"web\" successfully rolled out\n"),
        "{}",
        stdout(&out)
    );
    assert_eq!(versions(&s, "web").await, ["1", "1", "1"]);

    // watch every pod change from here on; check the bounds after each event
    let (_, list) = s
        .call(
            Method::GET,
            "/api/v1/namespaces/default/pods?labelSelector=app%3Dweb",
            None,
        )
        .await;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let mut pods: std::collections::HashMap<String, Value> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap().to_string(),
                p.clone(),
            )
        })
        .collect();
    let resp = s.http
        .get(format!("{}/api/v1/namespaces/default/pods?watch=true&labelSelector=app%3Dweb&resourceVersion={rv}", s.url))
        .send()
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, usize)>();
    let watcher = tokio::spawn(async move {
        let mut body = resp.bytes_stream();
        let mut buf = Vec::new();
        while let Some(Ok(chunk)) = body.next().await {
            buf.extend_from_slice(&chunk);
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let Ok(ev) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                let name = ev["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                if ev["type"] == "DELETED" {
                    pods.remove(&name);
                } else {
                    pods.insert(name, ev["object"].clone());
                }
                let live: Vec<&Value> = pods
                    .values()
                    .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                    .collect();
                let available = live.iter().filter(|p| ready(p)).count();
                let _ = tx.send((live.len(), available));
            }
        }
    });

    // v1 → v2
    s.call_as(
        Method::PATCH,
        &format!("{DEPLOYS}/web"),
        Some(json!({"spec": {"template": {"metadata": {"annotations": {"version": "2"}}}}})),
        "application/merge-patch+json",
    )
    .await;
    let out = rollout_status(&s, "web");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(versions(&s, "web").await, ["2", "2", "2"]);
    watcher.abort();
    let mut seen = 0;
    while let Ok((live, available)) = rx.try_recv() {
        seen += 1;
        assert!(live <= 3 + 1, "more than replicas + maxSurge pods: {live}");
        assert!(
            available >= 3,
            "fewer than replicas - maxUnavailable available: {available}"
        );
    }
    assert!(seen >= 6, "the watch saw the rollout ({seen} events)");

    // v3 cannot start: the rollout stalls past its deadline and says so
    s.call_as(
        Method::PATCH,
        &format!("{DEPLOYS}/web"),
        Some(
            json!({"spec": {"template": {"metadata": {"annotations": {"version": "3"}},
            "spec": {"containers": [{"name": "w", "image": "file:///no/such/module.wasm"}]}}}}),
        ),
        "application/merge-patch+json",
    )
    .await;
    let out = rollout_status(&s, "web");
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert_eq!(
        stderr(&out),
        "error: deployment \"web\" exceeded its progress deadline\n"
    );
    let (_, d) = s.call(Method::GET, &format!("{DEPLOYS}/web"), None).await;
    let progressing = d["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Progressing")
        .unwrap()
        .clone();
    assert_eq!(
        (
            progressing["status"].as_str(),
            progressing["reason"].as_str()
        ),
        (Some("False"), Some("ProgressDeadlineExceeded"))
    );
    assert_eq!(d["status"]["availableReplicas"], 3, "v2 kept serving");

    let out = s.wkctl(&["rollout", "history", "deployment/web"]);
    assert_eq!(stdout(&out), "deployment.apps/web\nREVISION  CHANGE-CAUSE\n1         <none>\n2         <none>\n3         <none>\n\n");
    let out = s.wkctl(&["rollout", "undo", "deployment/web"]);
    assert_eq!(
        stdout(&out),
        "deployment.apps/web rolled back\n",
        "{}",
        stderr(&out)
    );
    let out = rollout_status(&s, "web");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(versions(&s, "web").await, ["2", "2", "2"]);
    let (_, d) = s.call(Method::GET, &format!("{DEPLOYS}/web"), None).await;
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "4",
        "v2's ReplicaSet came back as revision 4"
    );
    let (_, l) = s.call(Method::GET, RSS, None).await;
    assert_eq!(
        l["items"].as_array().unwrap().len(),
        3,
        "no ReplicaSet was duplicated"
    );

    // roll back further, to revision 1
    let out = s.wkctl(&["rollout", "undo", "deployment/web", "--to-revision=1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(rollout_status(&s, "web").status.success());
    assert_eq!(versions(&s, "web").await, ["1", "1", "1"]);
}

#[tokio::test]
async fn deployments_scale_restart_pause_and_cascade_on_delete() {
    let s = Server::start().await;
    let mut d = deployment("fleet", 0);
    d["spec"]["strategy"] = json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}});
    s.call(Method::POST, DEPLOYS, Some(d)).await;
    assert!(rollout_status(&s, "fleet").status.success());
    assert!(live_pods(&s, "fleet").await.is_empty());
    let out = s.wkctl(&["scale", "deployment/fleet", "--replicas=50"]);
    assert_eq!(
        stdout(&out),
        "deployment.apps/fleet scaled\n",
        "{}",
        stderr(&out)
    );
    let out = rollout_status(&s, "fleet");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(live_pods(&s, "fleet").await.len(), 50);
    s.wkctl(&["scale", "deployment", "fleet", "--replicas", "5"]);
    eventually(60, "5 pods left", || async {
        (live_pods(&s, "fleet").await.len() == 5).then_some(())
    })
    .await;

    // restart: every pod replaced, same template otherwise
    let before: Vec<String> = live_pods(&s, "fleet")
        .await
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let out = s.wkctl(&["rollout", "restart", "deployment/fleet"]);
    assert_eq!(stdout(&out), "deployment.apps/fleet restarted\n");
    assert!(rollout_status(&s, "fleet").status.success());
    let after = live_pods(&s, "fleet").await;
    assert_eq!(after.len(), 5);
    assert!(after
        .iter()
        .all(|p| !before.contains(&p["metadata"]["name"].as_str().unwrap().to_string())));

    // paused: a template change waits; resumed: it rolls out
    assert_eq!(
        stdout(&s.wkctl(&["rollout", "pause", "deployment/fleet"])),
        "deployment.apps/fleet paused\n"
    );
    s.call_as(
        Method::PATCH,
        &format!("{DEPLOYS}/fleet"),
        Some(json!({"spec": {"template": {"metadata": {"annotations": {"version": "2"}}}}})),
        "application/merge-patch+json",
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(versions(&s, "fleet").await, vec!["1"; 5]);
    assert_eq!(
        stdout(&s.wkctl(&["rollout", "resume", "deployment/fleet"])),
        "deployment.apps/fleet resumed\n"
    );
    assert!(rollout_status(&s, "fleet").status.success());
    assert_eq!(versions(&s, "fleet").await, vec!["2"; 5]);

    // a cascading delete takes the ReplicaSets and the pods
    let out = s.wkctl(&["delete", "deployment", "fleet"]);
    assert!(out.status.success(), "{}", stderr(&out));
    eventually(60, "everything of fleet is gone", || async {
        let (_, rs) = s.call(Method::GET, RSS, None).await;
        let (_, pods) = s
            .call(
                Method::GET,
                "/api/v1/namespaces/default/pods?labelSelector=app%3Dfleet",
                None,
            )
            .await;
        (rs["items"].as_array().unwrap().is_empty() && pods["items"].as_array().unwrap().is_empty())
            .then_some(())
    })
    .await;
}
