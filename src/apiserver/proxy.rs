//! `pods/{name}/log`: served by the agent of the pod's node, proxied here as
//! kube-apiserver proxies to the kubelet.

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::Response;
use serde_json::Value;

use crate::agent::server::LogParams;
use crate::api::resources;
use crate::api::ApiError;

use super::{handlers, ApiState};

fn names(pod: &Value, list: &str) -> Vec<String> {
    pod["spec"][list]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect()
}

/// Stream a container's log from its node.
pub async fn pod_logs(
    state: &ApiState,
    ns: &str,
    name: &str,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let pods = resources::lookup("pods").expect("pods are served");
    let pod = handlers::get(&state.store, pods, ns, name)?;
    let params: LogParams = serde_urlencoded::from_str(query.unwrap_or_default())
        .map_err(|e| ApiError::BadRequest(format!("invalid query parameters: {e}")))?;
    let containers = names(&pod, "containers");
    let container = match params.container.clone() {
        Some(c) => c,
        None if containers.len() == 1 => containers[0].clone(),
        None => {
            return Err(ApiError::BadRequest(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            )))
        }
    };
    if !containers.contains(&container) && !names(&pod, "initContainers").contains(&container) {
        return Err(ApiError::BadRequest(format!(
            "container {container} is not valid for pod {name}"
        )));
    }
    let node_name = pod["spec"]["nodeName"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::BadRequest(format!("pod {name} does not have a host assigned")))?;
    let nodes = resources::lookup("nodes").expect("nodes are served");
    let node = handlers::get(&state.store, nodes, "", node_name)?;
    let addr = node["status"]["addresses"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["type"] == "InternalIP"))
        .and_then(|x| x["address"].as_str())
        .ok_or_else(|| ApiError::Unavailable(format!("node {node_name} has no InternalIP")))?;
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .filter(|p| *p > 0)
        .ok_or_else(|| ApiError::Unavailable(format!("node {node_name} has no agent endpoint")))?;
    let mut url = format!("http://{addr}:{port}/containerLogs/{ns}/{name}/{container}");
    if let Some(q) = query {
        url = format!("{url}?{q}");
    }
    let resp = state
        .http
        .get(&url)
        .bearer_auth(&state.token)
        .send()
        .await
        .map_err(|e| {
            ApiError::Unavailable(format!("the agent of node {node_name} is unreachable: {e}"))
        })?;
    let code = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = if code.is_success() {
        "text/plain"
    } else {
        "application/json"
    };
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from_stream(resp.bytes_stream()))
        .map_err(|e| ApiError::Internal(e.to_string()))
}
