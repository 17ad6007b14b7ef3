//! `pods/{name}/log`, `exec` and `attach`: served by the agent of the pod's
//! node, proxied here as kube-apiserver proxies to the kubelet. Exec's
//! WebSocket upgrade is passed through: the agent speaks the channel
//! protocol, this side copies bytes.

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::Response;
use serde_json::Value;
use std::time::{Duration, Instant};

use crate::api::kubelet::LogParams;
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
    let container = pick_container(&pod, name, params.container.clone())?;
    let base = agent_base(state, &pod, name)?;
    let mut url = format!("{base}/containerLogs/{ns}/{name}/{container}");
    if let Some(q) = query {
        url = format!("{url}?{q}");
    }
    let resp = state.kubelet.get(&url).send().await.map_err(|e| {
        ApiError::Unavailable(format!(
            "the agent of pod {name}'s node is unreachable: {e}"
        ))
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

/// The container a request names, or the pod's only one.
fn pick_container(pod: &Value, name: &str, wanted: Option<String>) -> Result<String, ApiError> {
    let containers = names(pod, "containers");
    let container = match wanted {
        Some(c) => c,
        None if containers.len() == 1 => containers[0].clone(),
        None => {
            return Err(ApiError::BadRequest(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            )))
        }
    };
    if !containers.contains(&container) && !names(pod, "initContainers").contains(&container) {
        return Err(ApiError::BadRequest(format!(
            "container {container} is not valid for pod {name}"
        )));
    }
    Ok(container)
}

/// `https://ADDRESS:PORT` of the agent on the pod's node.
pub(super) fn agent_base(state: &ApiState, pod: &Value, name: &str) -> Result<String, ApiError> {
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
    Ok(format!("https://{addr}:{port}"))
}

/// The headers of a WebSocket handshake passed between client and agent.
const HANDSHAKE: [header::HeaderName; 5] = [
    header::CONNECTION,
    header::UPGRADE,
    header::SEC_WEBSOCKET_KEY,
    header::SEC_WEBSOCKET_VERSION,
    header::SEC_WEBSOCKET_PROTOCOL,
];

/// Exec in a container: validate, then pass the WebSocket upgrade through
/// to the pod's agent and copy bytes both ways until either side closes.
pub async fn pod_exec(
    state: &ApiState,
    ns: &str,
    name: &str,
    req: axum::extract::Request,
) -> Result<Response, ApiError> {
    pod_stream(state, ns, name, "exec", req).await
}

/// Attach to a running container's output: as exec, to the agent's
/// `/attach`.
pub async fn pod_attach(
    state: &ApiState,
    ns: &str,
    name: &str,
    req: axum::extract::Request,
) -> Result<Response, ApiError> {
    pod_stream(state, ns, name, "attach", req).await
}

async fn pod_stream(
    state: &ApiState,
    ns: &str,
    name: &str,
    verb: &str,
    mut req: axum::extract::Request,
) -> Result<Response, ApiError> {
    let pods = resources::lookup("pods").expect("pods are served");
    let pod = handlers::get(&state.store, pods, ns, name)?;
    let query = req.uri().query().unwrap_or_default().to_string();
    let params: Vec<(String, String)> = serde_urlencoded::from_str(&query)
        .map_err(|e| ApiError::BadRequest(format!("invalid query parameters: {e}")))?;
    let wanted = params
        .iter()
        .find(|(k, _)| k == "container")
        .map(|(_, v)| v.clone());
    let container = pick_container(&pod, name, wanted)?;
    if verb == "exec" && !params.iter().any(|(k, _)| k == "command") {
        return Err(ApiError::BadRequest(
            "you must specify at least 1 command".into(),
        ));
    }
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let target = format!("{verb}/{ns}/{name}/{container}?{query}");
    if !upgrade {
        // kubectl tries WebSocket first and falls back to SPDY/3.1 on any
        // failed upgrade, printing the second error: give it the first.
        if let Some(failed) = state.stream_failures.take(&target) {
            return Ok(failed);
        }
        return Err(ApiError::BadRequest(
            "Upgrade request required: exec and attach are served over WebSocket (v5.channel.k8s.io)"
                .into(),
        ));
    }
    let base = agent_base(state, &pod, name).inspect_err(|e| {
        state.stream_failures.put(&target, Failure::of(e));
    })?;
    let url = format!("{base}/{target}");
    let mut forward = state.kubelet.get(&url);
    for h in HANDSHAKE {
        if let Some(v) = req.headers().get(&h) {
            forward = forward.header(h.as_str(), v.as_bytes());
        }
    }
    let resp = forward.send().await.map_err(|e| {
        let e = ApiError::Unavailable(format!(
            "the agent of pod {name}'s node is unreachable: {e}"
        ));
        state.stream_failures.put(&target, Failure::of(&e));
        e
    })?;
    if resp.status().as_u16() != 101 {
        let code = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let body = resp.bytes().await.unwrap_or_default();
        let failed = Failure { code, body };
        state.stream_failures.put(&target, failed.clone());
        return Ok(failed.response());
    }
    let mut out = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for h in [
        header::CONNECTION,
        header::UPGRADE,
        header::SEC_WEBSOCKET_ACCEPT,
        header::SEC_WEBSOCKET_PROTOCOL,
    ] {
        if let Some(v) = resp.headers().get(h.as_str()) {
            out = out.header(h, v.as_bytes());
        }
    }
    let client = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let (agent, client) = match tokio::join!(resp.upgrade(), client) {
            (Ok(a), Ok(c)) => (a, c),
            (a, c) => {
                tracing::debug!(agent = ?a.err(), client = ?c.err(), "exec upgrade failed");
                return;
            }
        };
        let mut agent = agent;
        let mut client = hyper_util::rt::TokioIo::new(client);
        let _ = tokio::io::copy_bidirectional(&mut client, &mut agent).await;
    });
    out.body(Body::empty())
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// A failed exec or attach, as answered.
#[derive(Clone, Debug)]
pub struct Failure {
    code: StatusCode,
    body: bytes::Bytes,
}

impl Failure {
    fn of(e: &ApiError) -> Self {
        Failure {
            code: StatusCode::from_u16(e.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            body: serde_json::to_vec(&e.to_status())
                .unwrap_or_default()
                .into(),
        }
    }

    fn response(self) -> Response {
        let mut r = Response::new(Body::from(self.body));
        *r.status_mut() = self.code;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        r
    }
}

/// The last failures of exec and attach, by target (verb, pod, container
/// and query), for [`FAILURE_TTL`]. A client that falls back from WebSocket
/// to SPDY/3.1 (which this server does not speak) is answered with why the
/// WebSocket attempt failed, as kube-apiserver's SPDY path would fail too.
#[derive(Debug, Default)]
pub struct Failures(std::sync::Mutex<std::collections::HashMap<String, (Instant, Failure)>>);

/// How long a failure is kept for the retry.
pub const FAILURE_TTL: Duration = Duration::from_secs(10);

impl Failures {
    fn put(&self, target: &str, failure: Failure) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, (at, _)| at.elapsed() < FAILURE_TTL);
        map.insert(target.to_string(), (Instant::now(), failure));
    }

    fn take(&self, target: &str) -> Option<Response> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (at, failure) = map.remove(target)?;
        (at.elapsed() < FAILURE_TTL).then(|| failure.response())
    }
}
