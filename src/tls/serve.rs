//! Serving an axum router over TLS: HTTP/2 when the client offers it (one
//! multiplexed connection per client), HTTP/1.1 otherwise (and for upgrades);
//! one task per connection, the handshake bounded in time (a slow or broken client holds only its own task), the
//! verified client certificate's subject handed to the router as a request
//! extension, and a graceful stop that lets in-flight requests finish.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tower::ServiceExt;

use super::pki::CertInfo;
use crate::controllers::CancelToken;

/// How long a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a stopping server waits for open connections.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The other end of a connection, as the TLS layer saw it.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The subject of the client certificate, verified against the client
    /// CA during the handshake; `None` when the client sent none.
    pub cert: Option<Arc<CertInfo>>,
}

/// Serve `router` on `listener` with TLS until `cancel` turns true.
pub async fn serve(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    router: Router,
    mut cancel: CancelToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    // every connection task holds a sender; all gone = all connections closed
    let (open_tx, mut open_rx) = tokio::sync::mpsc::channel::<()>(1);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = cancel.wait_for(|s| *s) => break,
        };
        let (tcp, addr) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // out of descriptors and the like: back off, keep serving
                tracing::warn!(error = %e, "accepting a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let open = open_tx.clone();
        let mut stop = cancel.clone();
        tokio::spawn(async move {
            let _open = open;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%addr, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%addr, "TLS handshake timed out");
                    return;
                }
            };
            let cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| CertInfo::from_der(c))
                .map(Arc::new);
            let peer = Peer { addr, cert };
            let service = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
                req.extensions_mut().insert(peer.clone());
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer.addr));
                router.clone().oneshot(req)
            });
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let io = TokioIo::new(tls);
            if h2 {
                let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, service);
                let mut conn = std::pin::pin!(conn);
                let stopping = tokio::select! {
                    _ = conn.as_mut() => false,
                    _ = stop.wait_for(|s| *s) => true,
                };
                if stopping {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            } else {
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .with_upgrades();
                let mut conn = std::pin::pin!(conn);
                let stopping = tokio::select! {
                    _ = conn.as_mut() => false,
                    _ = stop.wait_for(|s| *s) => true,
                };
                if stopping {
                    // finish the requests in flight, take no new ones
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(listener);
    drop(open_tx);
    if tokio::time::timeout(DRAIN_TIMEOUT, open_rx.recv())
        .await
        .is_err()
    {
        tracing::debug!("connections still open after the drain timeout");
    }
}
