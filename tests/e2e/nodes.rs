//! Nodes coming and going: a killed agent's replicas are replaced on
//! another node once it is unreachable, and not duplicated when it returns;
//! cordon, uncordon and drain.

use reqwest::Method;
use serde_json::{json, Value};

use crate::controllers::{live_pods, template};
use crate::util::{eventually, stderr, stdout, AgentProc, Server};

const DEPLOYS: &str = "/apis/apps/v1/namespaces/default/deployments";

fn deployment(name: &str, replicas: i64) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}}, "template": template(name, "1")}})
}

async fn two_nodes(s: &Server) -> (AgentProc, AgentProc) {
    let a = AgentProc::start(s, "node-a");
    let b = AgentProc::start(s, "node-b");
    eventually(30, "both nodes register", || async {
        let (_, l) = s.call(Method::GET, "/api/v1/nodes", None).await;
        (l["items"].as_array().map_or(0, Vec::len) == 2).then_some(())
    })
    .await;
    (a, b)
}

fn on_node<'a>(pods: &'a [Value], node: &str) -> Vec<&'a Value> {
    pods.iter()
        .filter(|p| p["spec"]["nodeName"] == node)
        .collect()
}

fn running(p: &Value) -> bool {
    p["status"]["containerStatuses"][0]["state"]["running"].is_object()
}

#[tokio::test]
async fn a_lost_agents_replicas_move_to_another_node_and_are_not_duplicated_when_it_returns() {
    let s = Server::builder()
        .arg("--disable-agent")
        .arg("--node-monitor-grace-period")
        .arg("2")
        .arg("--pod-eviction-timeout")
        .arg("1")
        .start()
        .await;
    let (mut a, _b) = two_nodes(&s).await;
    s.call(Method::POST, DEPLOYS, Some(deployment("svc", 4)))
        .await;
    let pods = eventually(60, "4 replicas running", || async {
        let pods = live_pods(&s, "svc").await;
        (pods.len() == 4 && pods.iter().all(running)).then_some(pods)
    })
    .await;
    assert!(
        !on_node(&pods, "node-a").is_empty() && !on_node(&pods, "node-b").is_empty(),
        "replicas are spread over both nodes"
    );
    let lost: Vec<String> = on_node(&pods, "node-a")
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();

    a.kill9();
    let node = eventually(30, "node-a becomes unreachable", || async {
        let (_, n) = s.call(Method::GET, "/api/v1/nodes/node-a", None).await;
        let tainted = n["spec"]["taints"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["key"] == "node.kubernetes.io/unreachable");
        tainted.then_some(n)
    })
    .await;
    let ready = node["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("Unknown"), Some("NodeStatusUnknown"))
    );
    let moved = eventually(60, "4 replicas running on node-b", || async {
        let pods = live_pods(&s, "svc").await;
        (pods.len() == 4
            && pods
                .iter()
                .all(|p| p["spec"]["nodeName"] == "node-b" && running(p)))
        .then_some(pods)
    })
    .await;
    assert!(moved
        .iter()
        .all(|p| !lost.contains(&p["metadata"]["name"].as_str().unwrap().to_string())));

    // node-a returns: its evicted pods are finished, not run a second time
    a.restart();
    eventually(30, "node-a is Ready and untainted again", || async {
        let (_, n) = s.call(Method::GET, "/api/v1/nodes/node-a", None).await;
        let ready = n["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        let tainted = n["spec"]["taints"]
            .as_array()
            .is_some_and(|t| !t.is_empty());
        (ready && !tainted).then_some(())
    })
    .await;
    eventually(30, "the stale pods are gone", || async {
        let (_, l) = s
            .call(
                Method::GET,
                "/api/v1/namespaces/default/pods?labelSelector=app%3Dsvc",
                None,
            )
            .await;
        (l["items"].as_array().unwrap().len() == 4).then_some(())
    })
    .await;
    let pods = live_pods(&s, "svc").await;
    assert_eq!(pods.len(), 4, "no duplicates");
    assert!(pods.iter().all(|p| p["spec"]["nodeName"] == "node-b"));
}

#[tokio::test]
async fn drain_moves_replicas_off_a_cordoned_node() {
    let s = Server::builder().arg("--disable-agent").start().await;
    let (_a, _b) = two_nodes(&s).await;
    s.call(Method::POST, DEPLOYS, Some(deployment("api", 2)))
        .await;
    eventually(60, "2 replicas running", || async {
        let pods = live_pods(&s, "api").await;
        (pods.len() == 2 && pods.iter().all(running)).then_some(())
    })
    .await;
    let out = s.wkctl(&["cordon", "node-b"]);
    assert_eq!(stdout(&out), "node/node-b cordoned\n");
    assert_eq!(
        stdout(&s.wkctl(&["cordon", "node-b"])),
        "node/node-b already cordoned\n"
    );
    assert_eq!(
        stdout(&s.wkctl(&["uncordon", "node-b"])),
        "node/node-b uncordoned\n"
    );

    // a bare pod blocks a drain unless forced
    let bare = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare"},
        "spec": {"nodeName": "node-a", "containers": [{"name": "w", "image": crate::controllers::worker_image(), "args": ["0", "1000"]}]}});
    s.call(Method::POST, "/api/v1/namespaces/default/pods", Some(bare))
        .await;
    let out = s.wkctl(&["drain", "node-a"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(
            "cannot delete Pods that declare no controller (use --force to override): default/bare"
        ),
        "{}",
        stderr(&out)
    );

    let out = s.wkctl(&["drain", "node-a", "--force", "--timeout", "60"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("node/node-a already cordoned\n"), "{text}");
    assert!(text.ends_with("node/node-a drained\n"), "{text}");
    let pods = eventually(60, "the replicas run on node-b", || async {
        let pods = live_pods(&s, "api").await;
        (pods.len() == 2
            && pods
                .iter()
                .all(|p| p["spec"]["nodeName"] == "node-b" && running(p)))
        .then_some(pods)
    })
    .await;
    assert_eq!(pods.len(), 2);
    let (_, n) = s.call(Method::GET, "/api/v1/nodes/node-a", None).await;
    assert_eq!(n["spec"]["unschedulable"], true);
}

#[tokio::test]
async fn a_daemonset_follows_a_node_joining_and_rolls_out_a_new_template() {
    let s = Server::builder().arg("--disable-agent").start().await;
    let _a = AgentProc::start(&s, "node-a");
    eventually(30, "node-a registers", || async {
        (s.call(Method::GET, "/api/v1/nodes/node-a", None).await.0 == 200).then_some(())
    })
    .await;
    let ds = json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "edge-agent"},
        "spec": {"selector": {"matchLabels": {"app": "edge-agent"}}, "template": template("edge-agent", "1")}});
    let (code, body) = s
        .call(
            Method::POST,
            "/apis/apps/v1/namespaces/default/daemonsets",
            Some(ds),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    eventually(60, "a daemon pod on node-a", || async {
        let pods = live_pods(&s, "edge-agent").await;
        (pods.len() == 1 && pods[0]["spec"]["nodeName"] == "node-a" && running(&pods[0]))
            .then_some(())
    })
    .await;
    let _b = AgentProc::start(&s, "node-b");
    let pods = eventually(60, "a daemon pod on each node", || async {
        let pods = live_pods(&s, "edge-agent").await;
        let mut nodes: Vec<&str> = pods
            .iter()
            .filter(|p| running(p))
            .filter_map(|p| p["spec"]["nodeName"].as_str())
            .collect();
        nodes.sort();
        (nodes == ["node-a", "node-b"]).then_some(pods.clone())
    })
    .await;
    assert_eq!(pods.len(), 2);
    s.call_as(
        Method::PATCH,
        "/apis/apps/v1/namespaces/default/daemonsets/edge-agent",
        Some(json!({"spec": {"template": {"metadata": {"annotations": {"version": "2"}}}}})),
        "application/merge-patch+json",
    )
    .await;
    let ds = eventually(60, "both nodes run the new template", || async {
        let (_, ds) = s
            .call(
                Method::GET,
                "/apis/apps/v1/namespaces/default/daemonsets/edge-agent",
                None,
            )
            .await;
        let pods = live_pods(&s, "edge-agent").await;
        let done = pods.len() == 2
            && pods
                .iter()
                .all(|p| p["metadata"]["annotations"]["version"] == "2" && running(p))
            && ds["status"]["updatedNumberScheduled"] == 2
            && ds["status"]["numberReady"] == 2;
        done.then_some(ds)
    })
    .await;
    assert_eq!(ds["status"]["desiredNumberScheduled"], 2);
}

/// The Lease is the heartbeat; the Node's status is written only when it
/// changes or every five minutes, as the kubelet does
/// (`--node-status-report-frequency`): on flash, every write counts.
#[tokio::test]
async fn an_idle_node_renews_its_lease_without_rewriting_its_status() {
    let s = Server::start().await;
    let _agent = AgentProc::start(&s, "quiet"); // heartbeat every 500 ms
    let get = |what: &[&str]| {
        let out = s.kubectl(what);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    // settled: Ready, with its pod range (the IPAM controller's write)
    eventually(30, "the node is Ready", || async {
        let out = s.kubectl(&[
            "get",
            "node",
            "quiet",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status} {.spec.podCIDR}",
        ]);
        let text = stdout(&out);
        (text.starts_with("True ") && text.len() > 5).then_some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let node_rv = || {
        get(&[
            "get",
            "node",
            "quiet",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ])
    };
    let renewed = || {
        get(&[
            "get",
            "lease",
            "-n",
            "kube-node-lease",
            "quiet",
            "-o",
            "jsonpath={.spec.renewTime}",
        ])
    };
    let (rv, lease) = (node_rv(), renewed());
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_ne!(renewed(), lease, "the Lease was renewed");
    assert_eq!(node_rv(), rv, "the Node was not rewritten");
}
