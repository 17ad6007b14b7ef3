//! The agent's own HTTPS API, reached only through the API server (as
//! kube-apiserver reaches the kubelet): container logs, exec and stats.
//! The TLS handshake requires a client certificate from the cluster's
//! client CA; only the API server's identity (`system:kube-apiserver`)
//! and `system:masters` are let in.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncSeekExt};

use super::Agent;

struct AgentApi {
    agent: Arc<Agent>,
}

pub use crate::api::kubelet::LogParams;

/// The agent API router.
pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/containerLogs/{ns}/{pod}/{container}", get(logs))
        .route("/exec/{ns}/{pod}/{container}", get(exec))
        .route("/portForward/{ns}/{pod}", get(port_forward))
        .route("/attach/{ns}/{pod}/{container}", get(attach))
        .route("/stats", get(stats))
        .layer(axum::middleware::from_fn(only_the_api_server))
        .with_state(Arc::new(AgentApi { agent }))
}

/// Let in the API server's client certificate (and cluster admins').
async fn only_the_api_server(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let cert = req
        .extensions()
        .get::<crate::tls::serve::Peer>()
        .and_then(|p| p.cert.clone());
    match cert {
        Some(c)
            if c.common_name == crate::auth::APISERVER_USER
                || c.organizations.iter().any(|o| o == crate::auth::MASTERS) =>
        {
            next.run(req).await
        }
        Some(c) => error(
            StatusCode::FORBIDDEN,
            format!(
                "Forbidden (user={}, verb={}, resource=nodes, subresource=proxy)",
                c.common_name,
                req.method().as_str().to_lowercase()
            ),
        ),
        None => error(StatusCode::UNAUTHORIZED, "Unauthorized".into()),
    }
}

fn error(code: StatusCode, message: String) -> Response {
    let reason = match code {
        StatusCode::NOT_FOUND => "NotFound",
        StatusCode::UNAUTHORIZED => "Unauthorized",
        StatusCode::FORBIDDEN => "Forbidden",
        _ => "BadRequest",
    };
    (code, axum::Json(serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code.as_u16()}))).into_response()
}

/// `stats`: the containers' sampled metrics (see `agent::metrics`).
async fn stats(State(api): State<Arc<AgentApi>>) -> Response {
    axum::Json(api.agent.metrics.document(&api.agent.config.node_name)).into_response()
}

pub use crate::api::kubelet::PORT_FORWARD_UPGRADE;

#[derive(Debug, Deserialize)]
struct PortParam {
    port: u16,
}

/// A connection to one port of a pod on this node: connect to the pod's
/// IP, then answer the upgrade and copy bytes both ways. The API server
/// speaks the client's port-forward protocol; this side only connects.
async fn port_forward(
    State(api): State<Arc<AgentApi>>,
    Path((ns, pod)): Path<(String, String)>,
    Query(q): Query<PortParam>,
    mut req: axum::extract::Request,
) -> Response {
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(PORT_FORWARD_UPGRADE));
    if !upgrade {
        return error(StatusCode::BAD_REQUEST, "Upgrade request required".into());
    }
    let ctx = match pod_here(&api, &ns, &pod) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let ip = ctx.pod_ip();
    let addr = format!("{ip}:{}", q.port);
    let tcp = match tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(&addr),
    )
    .await
    {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            return error(
                StatusCode::BAD_GATEWAY,
                format!(
                    "error forwarding port {} to pod {ns}/{pod}: dial tcp {addr}: {e}",
                    q.port
                ),
            )
        }
        Err(_) => {
            return error(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "error forwarding port {} to pod {ns}/{pod}: dial tcp {addr}: timed out",
                    q.port
                ),
            )
        }
    };
    let upgraded = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(io) = upgraded.await else { return };
        let mut io = hyper_util::rt::TokioIo::new(io);
        let mut tcp = tcp;
        let _ = tokio::io::copy_bidirectional(&mut io, &mut tcp).await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, PORT_FORWARD_UPGRADE)
        .body(Body::empty())
        .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "response".into()))
}

async fn exec(
    State(api): State<Arc<AgentApi>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let params: Vec<(String, String)> =
        serde_urlencoded::from_str(query.as_deref().unwrap_or_default()).unwrap_or_default();
    let flag = |k: &str| {
        params
            .iter()
            .any(|(key, v)| key == k && matches!(v.as_str(), "true" | "1"))
    };
    let command: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    if command.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "you must specify at least 1 command".into(),
        );
    }
    let ctx = match pod_settled(&api, &ns, &pod, &container).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let (runtime, id) = match ctx.exec_target(&container) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let Ok(ws) = ws else {
        return error(StatusCode::BAD_REQUEST, "Upgrade request required".into());
    };
    let session = super::exec::Session {
        runtime,
        id,
        command,
        stdin: flag("stdin"),
        stdout: flag("stdout"),
        stderr: flag("stderr"),
        tty: flag("tty"),
    };
    ws.protocols([super::exec::V5, super::exec::V4])
        .on_upgrade(move |socket| super::exec::run(socket, session))
}

/// Attach to a running container: what it writes from now on, stdout on
/// channel 1 and stderr on channel 2 (from its CRI log, which keeps the
/// streams apart), until it stops; then the final status on channel 3.
/// Input (channel 0) and terminal sizes (channel 4) go to the runtime: a
/// Linux container with `stdin: true` or `tty: true` reads them; a Wasm
/// guest's stdin is its own (WASI gives no way to reopen it), so its
/// runtime drops them.
async fn attach(
    State(api): State<Arc<AgentApi>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let params: Vec<(String, String)> =
        serde_urlencoded::from_str(query.as_deref().unwrap_or_default()).unwrap_or_default();
    let flag = |k: &str| {
        params
            .iter()
            .any(|(key, v)| key == k && matches!(v.as_str(), "true" | "1"))
    };
    let (want_out, want_err, want_in) = (flag("stdout"), flag("stderr"), flag("stdin"));
    let ctx = match pod_settled(&api, &ns, &pod, &container).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let target = if want_in {
        ctx.exec_target(&container).ok()
    } else {
        None
    };
    let (path, live) = match ctx.log_file(&container, false) {
        Ok(x) => x,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if !live {
        return error(
            StatusCode::BAD_REQUEST,
            format!("container {container} is not running"),
        );
    }
    let Ok(ws) = ws else {
        return error(StatusCode::BAD_REQUEST, "Upgrade request required".into());
    };
    let offset = tokio::fs::metadata(&path)
        .await
        .map(|m| m.len())
        .unwrap_or(0);
    ws.protocols([super::exec::V5, super::exec::V4])
        .on_upgrade(move |socket| async move {
            use axum::extract::ws::Message;
            use futures::{SinkExt, StreamExt};
            let (mut sink, mut incoming) = socket.split();
            // the client's input, for the runtime to feed the container
            let (mut stdin_w, stdin_r) = tokio::io::duplex(64 * 1024);
            let (resize_tx, resize_rx) = tokio::sync::mpsc::channel(8);
            let feeding = target.map(|(runtime, id)| {
                tokio::spawn(async move {
                    let input = wasmkube_runtime::AttachInput {
                        stdin: Box::new(stdin_r),
                        resize: Some(resize_rx),
                    };
                    let _ = runtime.attach_input(&id, input).await;
                })
            });
            let client_gone = async {
                use tokio::io::AsyncWriteExt;
                while let Some(Ok(m)) = incoming.next().await {
                    if matches!(m, Message::Close(_)) {
                        break;
                    }
                    let Some(b) = super::exec::payload(&m) else {
                        continue;
                    };
                    match b.first() {
                        Some(&super::exec::STDIN) => {
                            // a container that takes no input: it is dropped
                            let _ = stdin_w.write_all(&b[1..]).await;
                        }
                        Some(&super::exec::CLOSE) if b.get(1) == Some(&super::exec::STDIN) => {
                            // the client's input ended
                            let _ = stdin_w.shutdown().await;
                        }
                        Some(&super::exec::RESIZE) => {
                            if let Some(size) = super::exec::parse_resize(&b[1..]) {
                                let _ = resize_tx.try_send(size);
                            }
                        }
                        _ => {}
                    }
                }
                drop(stdin_w);
            };
            let tail = async {
                let (line_tx, mut lines) = tokio::sync::mpsc::channel(64);
                let follow = tokio::spawn(follow_log(path, offset, ctx, container, line_tx));
                while let Some(line) = lines.recv().await {
                    let mut parts = line.splitn(4, ' ');
                    let (_, stream, tag) = (parts.next(), parts.next(), parts.next());
                    let mut text = parts.next().unwrap_or_default().to_string();
                    if tag != Some("P") {
                        text.push('\n');
                    }
                    let (channel, wanted) = if stream == Some("stderr") {
                        (2, want_err)
                    } else {
                        (1, want_out)
                    };
                    if wanted {
                        let m =
                            Message::Binary(super::exec::frame(channel, text.as_bytes()).into());
                        if sink.send(m).await.is_err() {
                            return;
                        }
                    }
                }
                if !matches!(follow.await, Ok(true)) {
                    return;
                }
                let status = br#"{"metadata":{},"status":"Success"}"#;
                let _ = sink
                    .send(Message::Binary(super::exec::frame(3, status).into()))
                    .await;
                // a normal closure: the client reads it as the end of the streams
                let _ = sink
                    .send(Message::Close(Some(axum::extract::ws::CloseFrame {
                        code: 1000,
                        reason: "".into(),
                    })))
                    .await;
            };
            tokio::select! {
                _ = tail => {}
                _ = client_gone => {}
            }
            // the input has ended (its writer is gone): let the runtime
            // finish with it (a stdinOnce container's input closes)
            if let Some(f) = feeding {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(2), f).await;
            }
        })
}

/// Send each whole line of the CRI log at `path` from `offset` on, as the
/// container writes it (without its newline), until the container stops or
/// the receiver goes. True when it ended because the container stopped.
async fn follow_log(
    path: std::path::PathBuf,
    offset: u64,
    ctx: Arc<super::pod::PodCtx>,
    container: String,
    tx: tokio::sync::mpsc::Sender<String>,
) -> bool {
    let Ok(mut file) = tokio::fs::File::open(&path).await else {
        return false;
    };
    if file.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
        return false;
    }
    let mut reader = tokio::io::BufReader::new(file);
    let mut line = String::new();
    loop {
        // a partial line stays in `line` until the rest is written
        match reader.read_line(&mut line).await {
            Ok(0) => {
                if !ctx.is_running(&container) {
                    return true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = tx.closed() => return false,
                }
            }
            Ok(_) if line.ends_with('\n') => {
                let whole = std::mem::take(&mut line);
                if tx
                    .send(whole.trim_end_matches('\n').to_string())
                    .await
                    .is_err()
                {
                    return false;
                }
            }
            Ok(_) => {}
            Err(_) => return false,
        }
    }
}

/// The pod `ns/pod` if it runs on this node, else a 404 saying so.
/// The pod's worker, once it has taken back what an earlier run of the
/// agent left running: right after a restart, exec and attach wait (up to
/// [`super::pod::ADOPT_WAIT`]) for the worker to register and adopt
/// `container`, as the kubelet serves them only once it knows the pod.
async fn pod_settled(
    api: &AgentApi,
    ns: &str,
    pod: &str,
    container: &str,
) -> Result<Arc<super::pod::PodCtx>, Box<Response>> {
    let deadline = tokio::time::Instant::now() + super::pod::ADOPT_WAIT;
    loop {
        let waiting = match pod_here(api, ns, pod) {
            Ok(ctx) if !ctx.adopting(container) => return Ok(ctx),
            Ok(ctx) => Ok(ctx),
            Err(r) if api.agent.resuming(ns, pod) => Err(r),
            Err(r) => return Err(r),
        };
        if tokio::time::Instant::now() >= deadline {
            return waiting;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pod_here(api: &AgentApi, ns: &str, pod: &str) -> Result<Arc<super::pod::PodCtx>, Box<Response>> {
    api.agent.pod(ns, pod).ok_or_else(|| {
        Box::new(error(
            StatusCode::NOT_FOUND,
            format!(
                "pod {ns}/{pod} is not running on node {}",
                api.agent.config.node_name
            ),
        ))
    })
}

fn format_line(line: &str, timestamps: bool) -> Option<String> {
    let mut parts = line.splitn(4, ' ');
    let (ts, _stream, _flag) = (parts.next()?, parts.next()?, parts.next()?);
    let text = parts.next().unwrap_or_default();
    Some(if timestamps {
        format!("{ts} {text}\n")
    } else {
        format!("{text}\n")
    })
}

async fn logs(
    State(api): State<Arc<AgentApi>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    Query(q): Query<LogParams>,
) -> Response {
    let ctx = match pod_here(&api, &ns, &pod) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let (path, live) = match ctx.log_file(&container, q.previous.unwrap_or(false)) {
        Ok(x) => x,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let timestamps = q.timestamps.unwrap_or(false);
    let text = tokio::fs::read_to_string(&path).await.unwrap_or_default();
    let mut lines: Vec<String> = text
        .lines()
        .filter_map(|l| format_line(l, timestamps))
        .collect();
    if let Some(n) = q.tail_lines {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    let head: String = lines.concat();
    if !(q.follow.unwrap_or(false) && live) {
        return ([(header::CONTENT_TYPE, "text/plain")], head).into_response();
    }
    // Follow: stream what the container writes until it stops or the client goes.
    let offset = text.len() as u64;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        if tx.send(Ok(Bytes::from(head))).await.is_err() {
            return;
        }
        let (line_tx, mut lines) = tokio::sync::mpsc::channel(64);
        tokio::spawn(follow_log(path, offset, ctx, container, line_tx));
        while let Some(line) = lines.recv().await {
            if let Some(out) = format_line(&line, timestamps) {
                if tx.send(Ok(Bytes::from(out))).await.is_err() {
                    return;
                }
            }
        }
    });
    (
        [(header::CONTENT_TYPE, "text/plain")],
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
        .into_response()
}
