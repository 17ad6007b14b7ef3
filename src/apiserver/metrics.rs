//! Resource metrics (`metrics.k8s.io/v1beta1`: NodeMetrics, PodMetrics, as
//! metrics-server serves them, so `kubectl top`/`wkctl top` work) and the
//! request metrics of HTTP functions (`custom.metrics.k8s.io/v1beta2`:
//! `http_requests_per_second`, `http_requests_in_flight` per pod), which
//! the HorizontalPodAutoscaler reads.
//!
//! The API server gathers them on request from every node's agent
//! (`/stats`, sampled each second), as metrics-server scrapes kubelets.
//! Nothing is stored: metrics are not objects and never go through Raft.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{ApiState, Failure};
use crate::api::selector::LabelSelector;
use crate::api::{resources, ApiError};

/// Metric names served under custom.metrics.k8s.io.
pub const REQUESTS_PER_SECOND: &str = "http_requests_per_second";
pub const REQUESTS_IN_FLIGHT: &str = "http_requests_in_flight";

fn group(name: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{name}/{version}"), "version": version});
    json!({"name": name, "versions": [gv.clone()], "preferredVersion": gv})
}

/// Entries for `/apis`.
pub fn groups() -> Vec<Value> {
    vec![
        group("metrics.k8s.io", "v1beta1"),
        group("custom.metrics.k8s.io", "v1beta2"),
    ]
}

pub async fn metrics_group() -> Json<Value> {
    let mut g = group("metrics.k8s.io", "v1beta1");
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    Json(g)
}

pub async fn metrics_resources() -> Json<Value> {
    Json(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "metrics.k8s.io/v1beta1",
        "resources": [
            {"name": "nodes", "singularName": "", "namespaced": false, "kind": "NodeMetrics", "verbs": ["get", "list"]},
            {"name": "pods", "singularName": "", "namespaced": true, "kind": "PodMetrics", "verbs": ["get", "list"]}]}),
    )
}

pub async fn custom_group() -> Json<Value> {
    let mut g = group("custom.metrics.k8s.io", "v1beta2");
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    Json(g)
}

pub async fn custom_resources() -> Json<Value> {
    let r = |m: &str| json!({"name": format!("pods/{m}"), "singularName": "", "namespaced": true, "kind": "MetricValueList", "verbs": ["get"]});
    Json(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "custom.metrics.k8s.io/v1beta2",
        "resources": [r(REQUESTS_PER_SECOND), r(REQUESTS_IN_FLIGHT)]}),
    )
}

/// Every node's `/stats`, gathered concurrently (nodes that do not answer
/// within two seconds are left out, as metrics-server leaves them out).
async fn gather(state: &ApiState) -> Vec<Value> {
    let nodes = resources::lookup("nodes").expect("nodes are served");
    let items: Vec<Arc<Value>> = state
        .store
        .cache()
        .list(&nodes.prefix(None), None, None, None, &|_| true)
        .map(|page| page.items)
        .unwrap_or_default();
    let calls = items.iter().filter_map(|n| {
        let ip = n["status"]["addresses"]
            .as_array()?
            .iter()
            .find(|a| a["type"] == "InternalIP")?["address"]
            .as_str()?
            .to_string();
        let port = n
            .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
            .and_then(Value::as_u64)
            .filter(|p| *p > 0)?;
        let req = state
            .kubelet
            .get(format!("https://{ip}:{port}/stats"))
            .timeout(Duration::from_secs(2));
        Some(async move { req.send().await.ok()?.json::<Value>().await.ok() })
    });
    futures::future::join_all(calls)
        .await
        .into_iter()
        .flatten()
        .collect()
}

fn cpu(nanocores: u64) -> String {
    format!("{nanocores}n")
}

fn memory(bytes: u64) -> String {
    format!("{}Ki", bytes.div_ceil(1024))
}

fn selector(query: &Option<String>) -> Result<Option<LabelSelector>, ApiError> {
    let params: Vec<(String, String)> =
        serde_urlencoded::from_str(query.as_deref().unwrap_or_default()).unwrap_or_default();
    match params.iter().find(|(k, _)| k == "labelSelector") {
        Some((_, s)) if !s.is_empty() => LabelSelector::parse(s)
            .map(Some)
            .map_err(|e| ApiError::BadRequest(format!("labelSelector: {e}"))),
        _ => Ok(None),
    }
}

fn node_metrics(stats: &Value) -> Value {
    let n = &stats["node"];
    json!({"kind": "NodeMetrics", "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": {"name": n["name"], "creationTimestamp": stats["timestamp"]},
        "timestamp": stats["timestamp"], "window": format!("{}s", stats["windowSeconds"].as_u64().unwrap_or(1)),
        "usage": {"cpu": cpu(n["nanocores"].as_u64().unwrap_or(0)), "memory": memory(n["memoryBytes"].as_u64().unwrap_or(0))}})
}

fn pod_metrics(stats: &Value, pod: &Value) -> Value {
    let containers: Vec<Value> = pod["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            json!({"name": c["name"], "usage": {
            "cpu": cpu(c["nanocores"].as_u64().unwrap_or(0)),
            "memory": memory(c["memoryBytes"].as_u64().unwrap_or(0))}})
        })
        .collect();
    json!({"kind": "PodMetrics", "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": {"name": pod["name"], "namespace": pod["namespace"], "creationTimestamp": stats["timestamp"]},
        "timestamp": stats["timestamp"], "window": format!("{}s", stats["windowSeconds"].as_u64().unwrap_or(1)),
        "containers": containers})
}

/// The pods of the gathered stats with their stored objects (for labels),
/// filtered by namespace and selector.
fn pods<'a>(
    state: &ApiState,
    all: &'a [Value],
    ns: Option<&str>,
    sel: &Option<LabelSelector>,
) -> Vec<(&'a Value, &'a Value)> {
    let res = resources::lookup("pods").expect("pods are served");
    all.iter()
        .flat_map(|s| {
            s["pods"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |p| (s, p))
        })
        .filter(|(_, p)| ns.is_none_or(|ns| p["namespace"] == ns))
        .filter(|(_, p)| {
            let Some(sel) = sel else { return true };
            let key = res.key(
                p["namespace"].as_str().unwrap_or(""),
                p["name"].as_str().unwrap_or(""),
            );
            state
                .store
                .cache()
                .get(&key)
                .is_some_and(|obj| sel.matches_object(&obj))
        })
        .collect()
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"kind": kind, "apiVersion": "metrics.k8s.io/v1beta1", "metadata": {}, "items": items})
}

fn fail(e: ApiError) -> Response {
    Failure(e).into_response()
}

pub async fn list_nodes(State(state): State<Arc<ApiState>>, RawQuery(q): RawQuery) -> Response {
    let sel = match selector(&q) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let nodes = resources::lookup("nodes").expect("nodes are served");
    let items: Vec<Value> = gather(&state)
        .await
        .iter()
        .filter(|s| {
            let Some(sel) = &sel else { return true };
            let name = s["node"]["name"].as_str().unwrap_or("");
            state
                .store
                .cache()
                .get(&nodes.key("", name))
                .is_some_and(|n| sel.matches_object(&n))
        })
        .map(node_metrics)
        .collect();
    Json(list("NodeMetricsList", items)).into_response()
}

pub async fn get_node(State(state): State<Arc<ApiState>>, Path(name): Path<String>) -> Response {
    match gather(&state)
        .await
        .iter()
        .find(|s| s["node"]["name"] == name.as_str())
    {
        Some(s) => Json(node_metrics(s)).into_response(),
        None => fail(ApiError::NotFound {
            resource: "nodes.metrics.k8s.io".into(),
            name,
        }),
    }
}

pub async fn list_all_pods(State(state): State<Arc<ApiState>>, RawQuery(q): RawQuery) -> Response {
    list_pods_in(state, None, q).await
}

pub async fn list_pods(
    State(state): State<Arc<ApiState>>,
    Path(ns): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    list_pods_in(state, Some(ns), q).await
}

async fn list_pods_in(state: Arc<ApiState>, ns: Option<String>, q: Option<String>) -> Response {
    let sel = match selector(&q) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let all = gather(&state).await;
    let items = pods(&state, &all, ns.as_deref(), &sel)
        .into_iter()
        .map(|(s, p)| pod_metrics(s, p))
        .collect();
    Json(list("PodMetricsList", items)).into_response()
}

pub async fn get_pod(
    State(state): State<Arc<ApiState>>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    let all = gather(&state).await;
    match pods(&state, &all, Some(&ns), &None)
        .into_iter()
        .find(|(_, p)| p["name"] == name.as_str())
    {
        Some((s, p)) => Json(pod_metrics(s, p)).into_response(),
        None => fail(ApiError::NotFound {
            resource: "pods.metrics.k8s.io".into(),
            name,
        }),
    }
}

/// `custom.metrics.k8s.io/v1beta2/namespaces/{ns}/pods/{name|*}/{metric}`:
/// a MetricValueList with the metric of each selected pod (summed over its
/// containers).
pub async fn custom_pod_metric(
    State(state): State<Arc<ApiState>>,
    Path((ns, name, metric)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
) -> Response {
    if metric != REQUESTS_PER_SECOND && metric != REQUESTS_IN_FLIGHT {
        return fail(ApiError::NotFound {
            resource: "pods.custom.metrics.k8s.io".into(),
            name: metric,
        });
    }
    let sel = match selector(&q) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let all = gather(&state).await;
    let mut items = Vec::new();
    for (s, p) in pods(&state, &all, Some(&ns), &sel) {
        if name != "*" && p["name"] != name.as_str() {
            continue;
        }
        let field = if metric == REQUESTS_PER_SECOND {
            "requestsPerSecond"
        } else {
            "inFlight"
        };
        let total: f64 = p["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| c[field].as_f64().unwrap_or(0.0))
            .sum();
        items.push(json!({
            "describedObject": {"kind": "Pod", "namespace": p["namespace"], "name": p["name"], "apiVersion": "v1"},
            "metric": {"name": metric},
            "timestamp": s["timestamp"],
            "windowSeconds": s["windowSeconds"],
            // milli-units, as the custom metrics API quantities are
            "value": format!("{}m", (total * 1000.0).round() as i64),
        }));
    }
    Json(json!({"kind": "MetricValueList", "apiVersion": "custom.metrics.k8s.io/v1beta2", "metadata": {}, "items": items}))
        .into_response()
}
