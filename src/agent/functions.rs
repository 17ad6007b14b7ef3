//! HTTP functions on the pod network: the agent listens on the pod's
//! address at the container's port (its first `containerPort`, default
//! 8080) and hands every request to the runtime, which serves it with a
//! fresh instance. The guest has no socket of its own.
//!
//! The agent keeps a table of the functions it serves by address, so its
//! Ingress gateway dispatches to a local function in-process, with no
//! extra hop.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpSocket;
use tokio::task::JoinHandle;
use wasmkube_runtime::{BoxError, ContainerId, ContainerRuntime, HttpBody};

/// The default port of an HTTP function that declares none.
pub const DEFAULT_PORT: u16 = 8080;

/// The port a function container is served on.
pub fn port_of(container: &Value) -> u16 {
    container["ports"]
        .as_array()
        .and_then(|p| p.first())
        .and_then(|p| p["containerPort"].as_u64())
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(DEFAULT_PORT)
}

/// A function this agent serves.
#[derive(Clone)]
pub struct Local {
    pub runtime: Arc<dyn ContainerRuntime>,
    pub id: ContainerId,
}

impl Local {
    /// Serve one request in-process.
    pub async fn call(&self, req: http::Request<HttpBody>) -> http::Response<HttpBody> {
        match self.runtime.serve_http(&self.id, req).await {
            Ok(r) => r,
            Err(e) => text(503, &format!("{e}")),
        }
    }
}

/// A plain-text response.
pub fn text(status: u16, message: &str) -> http::Response<HttpBody> {
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(
            http_body_util::Full::new(bytes::Bytes::from(format!("{message}\n")))
                .map_err(|e| match e {})
                .boxed_unsync(),
        )
        .unwrap_or_default()
}

/// Turn a server request's body into the runtime's body type.
pub fn boxed(req: http::Request<Incoming>) -> http::Request<HttpBody> {
    req.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync())
}

/// The functions served on this node, by address.
#[derive(Default)]
pub struct Functions {
    by_addr: Mutex<HashMap<SocketAddr, Local>>,
}

impl Functions {
    /// The local function at `addr`, if any.
    pub fn get(&self, addr: &SocketAddr) -> Option<Local> {
        self.by_addr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(addr)
            .cloned()
    }

    /// Listen on `addr` for the function and serve it until the returned
    /// task is aborted (the container ended).
    pub fn serve(self: &Arc<Self>, addr: SocketAddr, f: Local) -> std::io::Result<JoinHandle<()>> {
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(1024)?;
        self.serve_on(addr, listener, f)
    }

    /// [`Functions::serve`] on a listener made elsewhere (inside a pod's
    /// network namespace); `addr` is the pod's address the function is
    /// known by.
    pub fn serve_on(
        self: &Arc<Self>,
        addr: SocketAddr,
        listener: tokio::net::TcpListener,
        f: Local,
    ) -> std::io::Result<JoinHandle<()>> {
        self.by_addr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(addr, f.clone());
        let table = self.clone();
        let guard = Unregister { table, addr };
        Ok(tokio::spawn(async move {
            let _guard = guard;
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    continue;
                };
                let _ = conn.set_nodelay(true);
                let f = f.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: http::Request<Incoming>| {
                            let f = f.clone();
                            async move { Ok::<_, Infallible>(f.call(boxed(req)).await) }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(conn), service)
                        .await;
                });
            }
        }))
    }
}

/// Removes a function from the table when its serving task ends.
struct Unregister {
    table: Arc<Functions>,
    addr: SocketAddr,
}

impl Drop for Unregister {
    fn drop(&mut self) {
        self.table
            .by_addr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.addr);
    }
}
