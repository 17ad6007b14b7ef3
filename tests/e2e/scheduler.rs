//! The scheduler against real servers and agents: pods without a node are
//! bound and run; unschedulable pods say why and are retried when nodes
//! change; bin packing fills one node before the next.

use reqwest::Method;
use serde_json::{json, Value};

use crate::util::{eventually, AgentProc, Server};

const PODS: &str = "/api/v1/namespaces/default/pods";

fn example(target: &str, name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("examples/target/{target}/release/{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: `bash tests/run.sh` builds the examples",
        path.display()
    );
    format!("file://{}", path.display())
}

/// An idle long-running pod (the worker example ticking once a second) with
/// requests and no node.
fn idle(name: &str, cpu: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {
        "volumes": [{"name": "data", "emptyDir": {}}],
        "containers": [{"name": "w", "image": example("wasm32-wasip1", "worker"), "args": ["0", "1000"],
            "resources": {"requests": {"cpu": cpu, "memory": "100Mi"}},
            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}})
}

fn scheduled_condition(p: &Value) -> Value {
    p["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "PodScheduled"))
        .cloned()
        .unwrap_or(Value::Null)
}

async fn event_messages(s: &Server, pod: &str, reason: &str) -> Vec<String> {
    let (_, l) = s
        .call(
            Method::GET,
            &format!("/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3D{pod}"),
            None,
        )
        .await;
    l["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reason"] == reason)
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn pods_without_a_node_are_scheduled_and_unschedulable_ones_say_why_until_a_node_fits() {
    let s = Server::start().await;
    let node = s.node_name().await;
    let hello = example("wasm32-wasip1", "hello");
    let pod = |name: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "h", "image": hello}]}})
    };
    s.call(Method::POST, PODS, Some(pod("free"))).await;
    let p = s
        .wait_pod("free", "free succeeds", |p| {
            p["status"]["phase"] == "Succeeded"
        })
        .await;
    assert_eq!(p["spec"]["nodeName"], node.as_str());
    let assigned = vec![format!("Successfully assigned default/free to {node}")];
    eventually(10, "the Scheduled event", || async {
        (event_messages(&s, "free", "Scheduled").await == assigned).then_some(())
    })
    .await;

    let mut picky = pod("picky");
    picky["spec"]["nodeSelector"] = json!({"disk": "ssd"});
    s.call(Method::POST, PODS, Some(picky)).await;
    let p = s
        .wait_pod("picky", "picky unschedulable", |p| {
            scheduled_condition(p)["status"] == "False"
        })
        .await;
    let message = "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.";
    assert_eq!(scheduled_condition(&p)["reason"], "Unschedulable");
    assert_eq!(scheduled_condition(&p)["message"], message);
    assert_eq!(p["status"]["phase"], "Pending");
    eventually(10, "a FailedScheduling event", || async {
        event_messages(&s, "picky", "FailedScheduling")
            .await
            .contains(&message.to_string())
            .then_some(())
    })
    .await;
    let out = crate::util::stdout(&s.wkctl(&["get", "pod", "picky"]));
    assert!(out.contains("Pending"), "{out}");

    // the node gains the label: the pod is retried, placed and run
    let (code, _) = s
        .call_as(
            Method::PATCH,
            &format!("/api/v1/nodes/{node}"),
            Some(json!({"metadata": {"labels": {"disk": "ssd"}}})),
            "application/merge-patch+json",
        )
        .await;
    assert_eq!(code, 200);
    let p = s
        .wait_pod("picky", "picky succeeds", |p| {
            p["status"]["phase"] == "Succeeded"
        })
        .await;
    assert_eq!(p["spec"]["nodeName"], node.as_str());
}

#[tokio::test]
async fn bin_packing_fills_one_agent_before_the_next_and_respects_cordons() {
    let s = Server::builder().arg("--disable-agent").start().await;
    let caps = ["--cpu", "2", "--memory", "4Gi"];
    let _a = AgentProc::start_with(&s, "node-a", &caps);
    let _b = AgentProc::start_with(&s, "node-b", &caps);
    eventually(30, "both nodes ready", || async {
        let (_, l) = s.call(Method::GET, "/api/v1/nodes", None).await;
        (l["items"].as_array().map_or(0, Vec::len) == 2).then_some(())
    })
    .await;
    for i in 0..5 {
        // one at a time, as a user applying them in turn
        let name = format!("p{i}");
        s.call(Method::POST, PODS, Some(idle(&name, "500m"))).await;
        s.wait_pod(&name, &format!("{name} running"), |p| {
            p["status"]["containerStatuses"][0]["state"]["running"].is_object()
        })
        .await;
    }
    let (_, l) = s.call(Method::GET, PODS, None).await;
    let mut placement: Vec<(String, String)> = l["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap().to_string(),
                p["spec"]["nodeName"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    placement.sort();
    let nodes: Vec<&str> = placement.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(
        nodes,
        ["node-a", "node-a", "node-a", "node-a", "node-b"],
        "{placement:?}"
    );

    // too big for anyone
    s.call(Method::POST, PODS, Some(idle("huge", "3"))).await;
    let p = s
        .wait_pod("huge", "huge unschedulable", |p| {
            scheduled_condition(p)["status"] == "False"
        })
        .await;
    assert_eq!(
        scheduled_condition(&p)["message"],
        "0/2 nodes are available: 2 Insufficient cpu."
    );

    // cordon node-b: the next pod fits nowhere
    s.call_as(
        Method::PATCH,
        "/api/v1/nodes/node-b",
        Some(json!({"spec": {"unschedulable": true}})),
        "application/merge-patch+json",
    )
    .await;
    s.call(Method::POST, PODS, Some(idle("late", "500m"))).await;
    let p = s
        .wait_pod("late", "late unschedulable", |p| {
            scheduled_condition(p)["status"] == "False"
        })
        .await;
    assert_eq!(
        scheduled_condition(&p)["message"],
        "0/2 nodes are available: 1 Insufficient cpu, 1 node(s) were unschedulable."
    );
    // freeing room on node-a lets it in
    s.call(Method::DELETE, &format!("{PODS}/p0"), None).await;
    let p = s
        .wait_pod("late", "late placed", |p| p["spec"]["nodeName"] == "node-a")
        .await;
    assert_eq!(p["spec"]["nodeName"], "node-a");
}
