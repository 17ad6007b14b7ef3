//! Workload controllers and the garbage collector against a real server
//! and its embedded node: ReplicaSets keep their count (replacing deleted
//! pods, scaling up and down), deletion propagates in the background, in
//! the foreground and not at all (orphan).

use reqwest::Method;
use serde_json::{json, Value};

use crate::util::{eventually, Server};

const PODS: &str = "/api/v1/namespaces/default/pods";
const RSS: &str = "/apis/apps/v1/namespaces/default/replicasets";

pub fn worker_image() -> String {
    crate::util::example_image("wasm32-wasip1", "worker")
}

/// A pod template running the idle worker example, labelled `app: APP`.
pub fn template(app: &str, version: &str) -> Value {
    json!({"metadata": {"labels": {"app": app}, "annotations": {"version": version}},
        "spec": {"terminationGracePeriodSeconds": 1,
            "volumes": [{"name": "data", "emptyDir": {}}],
            "containers": [{"name": "w", "image": worker_image(), "args": ["0", "1000"],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}})
}

fn replicaset(name: &str, replicas: i64) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}}, "template": template(name, "1")}})
}

/// Pods labelled `app=APP` that are not being deleted.
pub async fn live_pods(s: &Server, app: &str) -> Vec<Value> {
    let (_, l) = s
        .call(
            Method::GET,
            &format!("{PODS}?labelSelector=app%3D{app}"),
            None,
        )
        .await;
    l["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .cloned()
        .collect()
}

async fn running(s: &Server, app: &str, n: usize) -> Vec<Value> {
    eventually(60, &format!("{n} running {app} pods"), || async {
        let pods = live_pods(s, app).await;
        let running = pods
            .iter()
            .filter(|p| p["status"]["containerStatuses"][0]["state"]["running"].is_object())
            .count();
        (pods.len() == n && running == n).then_some(pods)
    })
    .await
}

async fn gone(s: &Server, path: &str) {
    eventually(60, &format!("{path} is gone"), || async {
        (s.call(Method::GET, path, None).await.0 == 404).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_replicaset_keeps_its_count_and_scales() {
    let s = Server::start().await;
    let (code, body) = s.call(Method::POST, RSS, Some(replicaset("web", 3))).await;
    assert_eq!(code, 201, "{body}");
    let pods = running(&s, "web", 3).await;
    for p in &pods {
        let owner = &p["metadata"]["ownerReferences"][0];
        assert_eq!(
            (owner["kind"].as_str(), owner["controller"].as_bool()),
            (Some("ReplicaSet"), Some(true))
        );
        assert!(p["metadata"]["name"].as_str().unwrap().starts_with("web-"));
    }
    // a deleted pod is replaced
    let victim = pods[0]["metadata"]["name"].as_str().unwrap().to_string();
    s.call(Method::DELETE, &format!("{PODS}/{victim}"), None)
        .await;
    let pods = running(&s, "web", 3).await;
    assert!(pods
        .iter()
        .all(|p| p["metadata"]["name"] != victim.as_str()));
    // an orphan with the right labels is adopted instead of creating a fourth
    let (_, rs) = s.call(Method::GET, &format!("{RSS}/web"), None).await;
    assert_eq!(rs["status"]["replicas"], 3);
    eventually(30, "status counts ready replicas", || async {
        let (_, rs) = s.call(Method::GET, &format!("{RSS}/web"), None).await;
        (rs["status"]["readyReplicas"] == 3 && rs["status"]["availableReplicas"] == 3).then_some(())
    })
    .await;
    // scale through the scale subresource, up then down
    let (code, _) = s
        .call_as(
            Method::PATCH,
            &format!("{RSS}/web/scale"),
            Some(json!({"spec": {"replicas": 5}})),
            "application/merge-patch+json",
        )
        .await;
    assert_eq!(code, 200);
    running(&s, "web", 5).await;
    let out = s.wkctl(&["scale", "rs/web", "--replicas=1"]);
    assert!(out.status.success(), "{}", crate::util::stderr(&out));
    assert_eq!(crate::util::stdout(&out), "replicaset.apps/web scaled\n");
    running(&s, "web", 1).await;
}

#[tokio::test]
async fn deletion_propagates_in_the_background_the_foreground_or_not_at_all() {
    let s = Server::start().await;
    for name in ["bg", "fg", "orphans"] {
        s.call(Method::POST, RSS, Some(replicaset(name, 2))).await;
    }
    for name in ["bg", "fg", "orphans"] {
        running(&s, name, 2).await;
    }
    // background: the ReplicaSet goes at once, its pods after
    let (code, _) = s.call(Method::DELETE, &format!("{RSS}/bg"), None).await;
    assert_eq!(code, 200);
    assert_eq!(s.call(Method::GET, &format!("{RSS}/bg"), None).await.0, 404);
    eventually(60, "bg's pods are collected", || async {
        let (_, l) = s
            .call(Method::GET, &format!("{PODS}?labelSelector=app%3Dbg"), None)
            .await;
        l["items"].as_array().unwrap().is_empty().then_some(())
    })
    .await;

    // foreground: the ReplicaSet waits, marked, until its pods are gone
    let (code, marked) = s
        .call(Method::DELETE, &format!("{RSS}/fg"), Some(json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Foreground"})))
        .await;
    assert_eq!(code, 200);
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(
        marked["metadata"]["finalizers"],
        json!(["foregroundDeletion"])
    );
    gone(&s, &format!("{RSS}/fg")).await;
    let (_, l) = s
        .call(Method::GET, &format!("{PODS}?labelSelector=app%3Dfg"), None)
        .await;
    assert!(
        l["items"].as_array().unwrap().is_empty(),
        "the pods went before their owner"
    );

    // orphan: the pods stay, no longer owned
    let (code, _) = s
        .call(
            Method::DELETE,
            &format!("{RSS}/orphans?propagationPolicy=Orphan"),
            None,
        )
        .await;
    assert_eq!(code, 200);
    gone(&s, &format!("{RSS}/orphans")).await;
    let pods = running(&s, "orphans", 2).await;
    for p in pods {
        assert!(p["metadata"]["ownerReferences"].is_null(), "{p}");
    }
}

#[tokio::test]
async fn a_statefulset_starts_in_order_and_keeps_each_pods_storage_and_node() {
    let s = Server::builder().arg("--disable-agent").start().await;
    let _a = crate::util::AgentProc::start(&s, "node-a");
    let _b = crate::util::AgentProc::start(&s, "node-b");
    eventually(30, "both nodes register", || async {
        let (_, l) = s.call(Method::GET, "/api/v1/nodes", None).await;
        (l["items"].as_array().map_or(0, Vec::len) == 2).then_some(())
    })
    .await;
    let mut tpl = template("db", "1");
    // the worker appends a tick to /data/work.log every 100 ms, forever
    tpl["spec"]["volumes"] = json!([]);
    tpl["spec"]["containers"][0]["args"] = json!(["0", "100"]);
    let sts = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
        "spec": {"replicas": 3, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}}, "template": tpl,
            "volumeClaimTemplates": [{"metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}});
    let (code, body) = s
        .call(
            Method::POST,
            "/apis/apps/v1/namespaces/default/statefulsets",
            Some(sts),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    // ordered: db-k only ever exists once db-(k-1) is ready
    let ready = |p: &Value| {
        p["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    };
    let pods = eventually(60, "db-0, db-1 and db-2 running", || async {
        let pods = live_pods(&s, "db").await;
        for k in 1..3 {
            let has = |n: String| {
                pods.iter()
                    .find(|p| p["metadata"]["name"] == n.as_str())
                    .cloned()
            };
            if has(format!("db-{k}")).is_some() {
                let prev = has(format!("db-{}", k - 1)).expect("the previous ordinal exists");
                assert!(ready(&prev), "db-{k} started before db-{} was ready", k - 1);
            }
        }
        (pods.len() == 3 && pods.iter().all(&ready)).then_some(pods)
    })
    .await;
    let node_of = |pods: &[Value], name: &str| {
        pods.iter().find(|p| p["metadata"]["name"] == name).unwrap()["spec"]["nodeName"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let node = node_of(&pods, "db-1");
    let (_, claim) = s
        .call(
            Method::GET,
            "/api/v1/namespaces/default/persistentvolumeclaims/data-db-1",
            None,
        )
        .await;
    assert_eq!(claim["status"]["phase"], "Bound");
    assert_eq!(
        claim["metadata"]["annotations"]["volume.kubernetes.io/selected-node"],
        node.as_str()
    );
    let uid = pods
        .iter()
        .find(|p| p["metadata"]["name"] == "db-1")
        .unwrap()["metadata"]["uid"]
        .clone();

    // delete db-1: it comes back with the same name, on the same node, with its data
    s.call(Method::DELETE, "/api/v1/namespaces/default/pods/db-1", None)
        .await;
    let back = eventually(60, "db-1 is back", || async {
        let pods = live_pods(&s, "db").await;
        pods.into_iter()
            .find(|p| p["metadata"]["name"] == "db-1" && p["metadata"]["uid"] != uid && ready(p))
    })
    .await;
    assert_eq!(
        back["spec"]["nodeName"],
        node.as_str(),
        "reattached where its volume lives"
    );
    let agent_dir = if node == "node-a" {
        _a.dir.path()
    } else {
        _b.dir.path()
    };
    let log = agent_dir.join("data/claims/default/data-db-1/work.log");
    let seen = std::sync::Mutex::new(String::new());
    eventually(30, "the new db-1 appends to the old data", || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let starts = text.lines().filter(|l| *l == "tick 1").count();
        let ok = starts == 2;
        // what the file held, should this time out: its runs and any line
        // that is not a whole tick
        let odd: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.strip_prefix("tick ")
                    .is_none_or(|n| n.parse::<u64>().is_err())
            })
            .collect();
        let summary = format!("{starts} run(s), lines not a whole tick: {odd:?}");
        let mut seen = seen.lock().unwrap();
        if !ok && *seen != summary {
            eprintln!("{}: {summary}", log.display());
            *seen = summary;
        }
        // the worker restarts its count at 1: two runs leave two "tick 1" lines
        ok.then_some(())
    })
    .await;
}

#[tokio::test]
async fn endpoints_follow_the_ready_pods_a_service_selects() {
    let s = Server::start().await;
    let mut tpl = template("api", "1");
    tpl["spec"]["containers"][0]["ports"] = json!([{"name": "http", "containerPort": 8080}]);
    s.call(
        Method::POST,
        RSS,
        Some(
            json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "api"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "api"}}, "template": tpl}}),
        ),
    )
    .await;
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "api"},
        "spec": {"selector": {"app": "api"}, "ports": [{"name": "web", "port": 80, "targetPort": "http"}]}});
    let (code, body) = s
        .call(
            Method::POST,
            "/api/v1/namespaces/default/services",
            Some(svc),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let ep_path = "/api/v1/namespaces/default/endpoints/api";
    let addresses = |ep: &Value| -> Vec<String> {
        let mut ips: Vec<String> = ep["subsets"][0]["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["ip"].as_str().map(String::from))
            .collect();
        ips.sort();
        ips
    };
    let pod_ips = |pods: &[Value]| -> Vec<String> {
        let mut ips: Vec<String> = pods
            .iter()
            .filter_map(|p| p["status"]["podIP"].as_str().map(String::from))
            .collect();
        ips.sort();
        ips
    };
    let pods = running(&s, "api", 2).await;
    let ep = eventually(30, "the endpoints list both pods", || async {
        let (_, ep) = s.call(Method::GET, ep_path, None).await;
        (addresses(&ep) == pod_ips(&pods)).then_some(ep)
    })
    .await;
    assert_eq!(
        ep["subsets"][0]["ports"][0],
        json!({"name": "web", "port": 8080, "protocol": "TCP"})
    );
    // a replaced pod: the endpoints follow
    let victim = pods[0]["metadata"]["name"].as_str().unwrap().to_string();
    s.call(Method::DELETE, &format!("{PODS}/{victim}"), None)
        .await;
    let pods = running(&s, "api", 2).await;
    eventually(30, "the endpoints follow the replacement", || async {
        let (_, ep) = s.call(Method::GET, ep_path, None).await;
        (addresses(&ep) == pod_ips(&pods)).then_some(())
    })
    .await;
    // the Service goes: so do its endpoints
    s.call(
        Method::DELETE,
        "/api/v1/namespaces/default/services/api",
        None,
    )
    .await;
    gone(&s, ep_path).await;
}
