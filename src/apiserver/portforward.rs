//! `pods/{name}/portforward`: the client's protocol ends here, and each
//! forwarded connection goes on to the pod's agent, which connects to the
//! pod's IP and port (a Wasm guest on `wasi:sockets`, an HTTP function).
//!
//! Three ways in, as kube-apiserver and the kubelet accept them:
//! - a WebSocket with subprotocol `SPDY/3.1+portforward.k8s.io`: kubectl
//!   ≥ 1.31 tunnels SPDY through it (every binary message is a run of the
//!   SPDY byte stream);
//! - `Upgrade: SPDY/3.1` (`X-Stream-Protocol-Version: portforward.k8s.io`):
//!   kubectl's fallback, and older clients;
//! - a WebSocket with `v4.channel.k8s.io` (or no subprotocol): the channel
//!   protocol kube-rs speaks, ports from `?ports=`, channel `2i` carrying
//!   the data of the `i`th port and `2i+1` its errors, each channel first
//!   announcing its port as two little-endian bytes.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::{Message, Role};
use tokio_tungstenite::WebSocketStream;

use crate::api::{resources, ApiError};

use super::spdy::{self, Opener, Upstream};
use super::{handlers, proxy, ApiState};

/// The WebSocket subprotocol kubectl tunnels SPDY through.
pub const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// The channel protocols of the WebSocket port-forward.
const CHANNEL_PROTOCOLS: &[&str] = &["v4.channel.k8s.io", "portforward.k8s.io"];

use crate::api::kubelet::PORT_FORWARD_UPGRADE as AGENT_UPGRADE;

/// An opener of connections to `pod`'s ports through its agent.
fn opener(state: &ApiState, ns: &str, name: &str, agent: String) -> Opener {
    let client = state.kubelet.clone();
    let (ns, name) = (ns.to_string(), name.to_string());
    Arc::new(move |port: u16| {
        let client = client.clone();
        let url = format!("{agent}/portForward/{ns}/{name}?port={port}");
        Box::pin(async move {
            let resp = client
                .get(&url)
                .header(header::CONNECTION.as_str(), "Upgrade")
                .header(header::UPGRADE.as_str(), AGENT_UPGRADE)
                .send()
                .await
                .map_err(|e| format!("the agent of the pod's node is unreachable: {e}"))?;
            if resp.status().as_u16() != 101 {
                let text = resp.text().await.unwrap_or_default();
                let message = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v["message"].as_str().map(String::from))
                    .unwrap_or(text);
                return Err(message);
            }
            let io = resp
                .upgrade()
                .await
                .map_err(|e| format!("upgrading the agent connection: {e}"))?;
            Ok(Box::pin(io) as Upstream)
        })
    })
}

fn header_has(req: &axum::extract::Request, name: header::HeaderName, want: &str) -> bool {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case(want))
}

/// Serve a port-forward request.
pub async fn pod_portforward(
    state: &ApiState,
    ns: &str,
    name: &str,
    mut req: axum::extract::Request,
) -> Result<Response, ApiError> {
    let pods = resources::lookup("pods").expect("pods are served");
    let pod = handlers::get(&state.store, pods, ns, name)?;
    if pod["status"]["phase"] != "Running" {
        return Err(ApiError::BadRequest(format!(
            "unable to upgrade connection: pod {name} is not running (phase {})",
            pod["status"]["phase"].as_str().unwrap_or("Pending")
        )));
    }
    let open = opener(state, ns, name, proxy::agent_base(state, &pod, name)?);
    let upgraded = hyper::upgrade::on(&mut req);
    if header_has(&req, header::UPGRADE, "websocket") {
        let key = req
            .headers()
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or_else(|| ApiError::BadRequest("missing Sec-WebSocket-Key".into()))?
            .as_bytes()
            .to_vec();
        let offered: Vec<String> = req
            .headers()
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|p| p.trim().to_string())
            .collect();
        let chosen = if offered.iter().any(|p| p == TUNNEL_PROTOCOL) {
            Some(TUNNEL_PROTOCOL)
        } else if offered.is_empty() {
            None
        } else {
            Some(
                *CHANNEL_PROTOCOLS
                    .iter()
                    .find(|c| offered.iter().any(|p| p == *c))
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "none of the offered subprotocols {offered:?} is supported: {TUNNEL_PROTOCOL}, {}",
                            CHANNEL_PROTOCOLS.join(", ")
                        ))
                    })?,
            )
        };
        let ports: Vec<u16> = match chosen {
            Some(TUNNEL_PROTOCOL) => Vec::new(),
            _ => {
                let query = req.uri().query().unwrap_or_default();
                let params: Vec<(String, String)> =
                    serde_urlencoded::from_str(query).unwrap_or_default();
                let ports: Result<Vec<u16>, _> = params
                    .iter()
                    .filter(|(k, _)| k == "ports" || k == "port")
                    .flat_map(|(_, v)| v.split(','))
                    .map(|p| p.trim().parse::<u16>())
                    .collect();
                let ports = ports
                    .map_err(|e| ApiError::BadRequest(format!("invalid port in ports: {e}")))?;
                if ports.is_empty() {
                    return Err(ApiError::BadRequest(
                        "query parameter \"ports\" is required".into(),
                    ));
                }
                ports
            }
        };
        let mut resp = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "websocket")
            .header(
                header::SEC_WEBSOCKET_ACCEPT,
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key),
            );
        if let Some(p) = chosen {
            resp = resp.header(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
        }
        let tunnel = chosen == Some(TUNNEL_PROTOCOL);
        tokio::spawn(async move {
            let Ok(io) = upgraded.await else { return };
            let ws = WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, None).await;
            if tunnel {
                tunnel_spdy(ws, open).await;
            } else {
                channels(ws, ports, open).await;
            }
        });
        return resp
            .body(Body::empty())
            .map_err(|e| ApiError::Internal(e.to_string()));
    }
    if header_has(&req, header::UPGRADE, "SPDY/3.1") {
        tokio::spawn(async move {
            let Ok(io) = upgraded.await else { return };
            if let Err(e) = spdy::serve(TokioIo::new(io), open).await {
                tracing::debug!(error = %e, "port-forward session ended");
            }
        });
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "SPDY/3.1")
            .header("X-Stream-Protocol-Version", "portforward.k8s.io")
            .body(Body::empty())
            .map_err(|e| ApiError::Internal(e.to_string()));
    }
    Err(ApiError::BadRequest(
        "Upgrade request required: a WebSocket or SPDY/3.1".into(),
    ))
}

/// SPDY carried in WebSocket binary messages.
async fn tunnel_spdy<S>(ws: WebSocketStream<S>, open: Opener)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (here, there) = tokio::io::duplex(256 * 1024);
    let session = tokio::spawn(async move {
        if let Err(e) = spdy::serve(there, open).await {
            tracing::debug!(error = %e, "port-forward session ended");
        }
    });
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (mut rd, mut wr) = tokio::io::split(here);
    let inbound = async {
        while let Some(Ok(msg)) = ws_rx.next().await {
            match msg {
                Message::Binary(b) if wr.write_all(&b).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = wr.shutdown().await;
    };
    let outbound = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if ws_tx
                        .send(Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = ws_tx.close().await;
    };
    tokio::select! {
        _ = inbound => {}
        _ = outbound => {}
    }
    session.abort();
}

/// The WebSocket channel protocol: one connection per port.
async fn channels<S>(ws: WebSocketStream<S>, ports: Vec<u16>, open: Opener)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (out_tx, mut out_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let mut feeds = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let (data, error) = ((2 * i) as u8, (2 * i + 1) as u8);
        let lo_hi = port.to_le_bytes();
        let _ = out_tx.send(vec![data, lo_hi[0], lo_hi[1]]);
        let _ = out_tx.send(vec![error, lo_hi[0], lo_hi[1]]);
        let (feed_tx, mut feed_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        feeds.push(feed_tx);
        let (open, out_tx, port) = (open.clone(), out_tx.clone(), *port);
        tokio::spawn(async move {
            let conn = match open(port).await {
                Ok(c) => c,
                Err(msg) => {
                    let mut m = vec![error];
                    m.extend_from_slice(msg.as_bytes());
                    let _ = out_tx.send(m);
                    return;
                }
            };
            let (mut up_rd, mut up_wr) = tokio::io::split(conn);
            let to_pod = async {
                while let Some(chunk) = feed_rx.recv().await {
                    if up_wr.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
                let _ = up_wr.shutdown().await;
            };
            // the WebSocket closes once every port's connection has ended:
            // this task's sender goes with the pod's side of it
            let from_pod = async move {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match up_rd.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let mut m = Vec::with_capacity(n + 1);
                            m.push(data);
                            m.extend_from_slice(&buf[..n]);
                            if out_tx.send(m).is_err() {
                                return;
                            }
                        }
                    }
                }
            };
            tokio::join!(to_pod, from_pod);
        });
    }
    drop(out_tx);
    let outbound = async {
        while let Some(m) = out_rx.recv().await {
            if ws_tx.send(Message::Binary(m.into())).await.is_err() {
                break;
            }
        }
        let _ = ws_tx.close().await;
    };
    let inbound = async {
        while let Some(Ok(msg)) = ws_rx.next().await {
            match msg {
                Message::Binary(b) if !b.is_empty() => {
                    let ch = b[0] as usize;
                    if ch.is_multiple_of(2) {
                        if let Some(f) = feeds.get(ch / 2) {
                            let _ = f.send(b[1..].to_vec());
                        }
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        feeds.clear();
    };
    tokio::join!(outbound, inbound);
}
