//! Metrics and autoscaling: `metrics.k8s.io` and `wkctl top`, the request
//! metrics of HTTP functions, and a HorizontalPodAutoscaler that scales a
//! function's Deployment to zero, wakes it for the first request (held by
//! the Ingress gateway until a replica is ready), scales it up under load
//! and back down.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::functions::function_image;
use crate::util::{eventually, free_port, stdout, Server};

const DEPLOY: &str = "/apis/apps/v1/namespaces/default/deployments";

async fn post(s: &Server, path: &str, body: Value) {
    let (code, resp) = s.call(Method::POST, path, Some(body)).await;
    assert_eq!(code, 201, "{resp}");
}

async fn replicas(s: &Server) -> i64 {
    let (_, d) = s.call(Method::GET, &format!("{DEPLOY}/fn"), None).await;
    d["spec"]["replicas"].as_i64().unwrap_or(-1)
}

async fn get(port: u16, path: &str) -> reqwest::Result<(u16, String)> {
    let r = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(40))
        .build()
        .unwrap()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .header("host", "fn.test")
        .send()
        .await?;
    Ok((r.status().as_u16(), r.text().await?))
}

#[tokio::test]
async fn a_function_scales_to_zero_wakes_on_a_request_and_scales_with_load() {
    let port = free_port();
    let s = Server::builder()
        .arg("--ingress-listen")
        .arg(&format!("127.0.0.1:{port}"))
        .arg("--horizontal-pod-autoscaler-sync-period")
        .arg("1")
        .start()
        .await;
    post(&s, DEPLOY, json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "fn"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "fn"}},
            "template": {"metadata": {"labels": {"app": "fn"}}, "spec": {
                "terminationGracePeriodSeconds": 2,
                "containers": [{"name": "fn", "image": function_image("hello_http"),
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}]}}}})).await;
    post(&s, "/api/v1/namespaces/default/services", json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "fn"}, "spec": {"selector": {"app": "fn"}, "ports": [{"port": 80, "targetPort": "http"}]}})).await;
    post(&s, "/apis/networking.k8s.io/v1/namespaces/default/ingresses", json!({"apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress", "metadata": {"name": "fn"}, "spec": {"rules": [{"host": "fn.test", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "fn", "port": {"number": 80}}}}]}}]}})).await;

    // the metrics API and wkctl top see the running function
    let (code, body) = eventually(60, "the function answers", || async {
        get(port, "/warm").await.ok().filter(|r| r.0 == 200)
    })
    .await;
    assert!(body.starts_with("hello from fn-"), "{code} {body}");
    let metrics = eventually(30, "pod metrics", || async {
        let (code, list) = s
            .call(
                Method::GET,
                "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods?labelSelector=app%3Dfn",
                None,
            )
            .await;
        (code == 200 && list["items"].as_array().is_some_and(|a| !a.is_empty())).then_some(list)
    })
    .await;
    let usage = &metrics["items"][0]["containers"][0]["usage"];
    assert!(usage["cpu"].as_str().unwrap().ends_with('n'), "{metrics}");
    assert!(
        usage["memory"].as_str().unwrap().ends_with("Ki"),
        "{metrics}"
    );
    let top = s.wkctl(&["top", "pods"]);
    assert!(
        top.status.success(),
        "{}",
        String::from_utf8_lossy(&top.stderr)
    );
    let top = stdout(&top);
    assert!(
        top.starts_with("NAME") && top.contains("CPU(cores)") && top.contains("fn-"),
        "{top}"
    );
    let top = stdout(&s.wkctl(&["top", "nodes"]));
    assert!(top.contains("MEMORY(%)"), "{top}");
    let (code, inflight) = s
        .call(Method::GET, "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/*/http_requests_in_flight?labelSelector=app%3Dfn", None)
        .await;
    assert_eq!(code, 200, "{inflight}");
    assert_eq!(
        inflight["items"][0]["metric"]["name"],
        "http_requests_in_flight"
    );

    // an autoscaler that may go to zero: idle, it does
    post(&s, "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers", json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "fn"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "fn"},
            "minReplicas": 0, "maxReplicas": 3,
            "metrics": [{"type": "Pods", "pods": {"metric": {"name": "http_requests_in_flight"},
                "target": {"type": "AverageValue", "averageValue": "1"}}}],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 2}}}})).await;
    eventually(
        60,
        "the Deployment scales to zero with no pods left",
        || async {
            let (_, pods) = s
                .call(
                    Method::GET,
                    "/api/v1/namespaces/default/pods?labelSelector=app%3Dfn",
                    None,
                )
                .await;
            let (_, svc) = s
                .call(Method::GET, "/api/v1/namespaces/default/services/fn", None)
                .await;
            (replicas(&s).await == 0
                && pods["items"].as_array().is_some_and(|a| a.is_empty())
                && svc["metadata"]["annotations"]["wasmkube.io/scaled-to-zero"].is_string())
            .then_some(())
        },
    )
    .await;

    // the first request is held until a replica is ready, and answered
    let started = Instant::now();
    let (code, body) = get(port, "/first").await.unwrap();
    let activation = started.elapsed();
    assert_eq!(code, 200, "{body}");
    assert!(
        body.starts_with("hello from fn-") && body.ends_with("GET /first\n"),
        "{body}"
    );
    eprintln!("activation from zero: {activation:?}");
    assert!(replicas(&s).await >= 1);

    // load: six clients keep requests in flight; it scales to the maximum
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..6 {
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let mut ok = 0u32;
            while !stop.load(Ordering::Relaxed) {
                if let Ok((200, _)) = get(port, "/sleep?ms=300").await {
                    ok += 1;
                }
            }
            ok
        }));
    }
    eventually(60, "three replicas under load", || async {
        (replicas(&s).await == 3).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut served = 0;
    for c in clients {
        served += c.await.unwrap();
    }
    assert!(served > 0);
    let (_, hpa) = s
        .call(
            Method::GET,
            "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers/fn",
            None,
        )
        .await;
    assert!(hpa["status"]["lastScaleTime"].is_string(), "{hpa}");
    // idle again: back to zero
    eventually(60, "back to zero", || async {
        (replicas(&s).await == 0).then_some(())
    })
    .await;
}

/// CPU for any Wasm pod: a guest spinning at its 200m limit against a
/// 100m request is at 200 % of a 50 % utilization target, so its
/// autoscaler adds replicas up to the maximum.
#[tokio::test]
async fn cpu_utilization_scales_a_busy_wasm_deployment() {
    let s = Server::builder()
        .arg("--horizontal-pod-autoscaler-sync-period")
        .arg("1")
        .start()
        .await;
    let image = crate::util::example_image("wasm32-wasip1", "busyloop");
    post(
        &s,
        DEPLOY,
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "burn"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "burn"}},
            "template": {"metadata": {"labels": {"app": "burn"}}, "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "spin", "image": image,
                    "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "200m"}}}]}}}}),
    )
    .await;
    post(&s, "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers", json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "burn"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "burn"},
            "minReplicas": 1, "maxReplicas": 2,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 50}}}]}})).await;
    eventually(60, "two replicas for a busy guest", || async {
        let (_, d) = s.call(Method::GET, &format!("{DEPLOY}/burn"), None).await;
        (d["spec"]["replicas"] == 2).then_some(())
    })
    .await;
    // the autoscaler writes its status after it scaled the Deployment
    let hpa = eventually(10, "the autoscaler's status says 2", || async {
        let (_, hpa) = s
            .call(
                Method::GET,
                "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers/burn",
                None,
            )
            .await;
        (hpa["status"]["desiredReplicas"] == 2).then_some(hpa)
    })
    .await;
    // the utilization it acted on is in its status, and in wkctl's TARGETS
    let out = stdout(&s.wkctl(&["get", "hpa", "burn"]));
    assert!(out.contains("cpu: ") && out.contains("%/50%"), "{out}");
    assert!(
        hpa["status"]["currentMetrics"][0]["resource"]["current"]["averageUtilization"].is_number(),
        "{hpa}"
    );
}
