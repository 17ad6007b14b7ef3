//! Outbound HTTPS from guests (`wasi:http/outgoing-handler`): like
//! wasmtime-wasi-http's default sender, but the TLS session trusts the
//! node's extra roots (the cluster CA) beside the public ones, and may
//! connect to an address resolved from a cluster name while verifying the
//! name itself. So a function reaches `https://kubernetes.default.svc`
//! the in-cluster way: its mounted ServiceAccount token, the cluster's CA.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, WasiBody};

/// The answer and the connection's remaining I/O.
pub(super) type SendResult = wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
)>;

/// A rustls client configuration trusting the public roots and `extra`
/// (DER certificates).
pub fn client_config(extra: &[Vec<u8>]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.into(),
    };
    for der in extra {
        if let Err(e) = roots.add(rustls::pki_types::CertificateDer::from(der.clone())) {
            tracing::warn!(error = %e, "ignoring an unusable extra root certificate");
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// Send `req` over TLS to `connect` (`host:port`), verifying `server_name`.
pub(super) async fn send_https(
    mut req: http::Request<WasiBody>,
    options: Option<wasmtime_wasi_http::RequestOptions>,
    connect: String,
    server_name: String,
    tls: Arc<rustls::ClientConfig>,
) -> SendResult {
    let connect_timeout = options
        .and_then(|o| o.connect_timeout)
        .unwrap_or(Duration::from_secs(600));
    let first_byte_timeout = options
        .and_then(|o| o.first_byte_timeout)
        .unwrap_or(Duration::from_secs(600));
    let tcp = match tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(&connect))
        .await
    {
        Ok(s) => s.map_err(Error::Connect)?,
        Err(_) => return Err(Error::ConnectionTimeout),
    };
    let name =
        rustls::pki_types::ServerName::try_from(server_name.trim_matches(['[', ']']).to_string())
            .map_err(|_| Error::HttpRequestUriInvalid)?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(Error::Tls)?;
    let (mut sender, conn) = tokio::time::timeout(
        connect_timeout,
        hyper::client::conn::http1::Builder::new().handshake(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)??;
    // the request line carries only the path: the authority is the Host header
    *req.uri_mut() = http::Uri::builder()
        .path_and_query(
            req.uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/"),
        )
        .build()
        .map_err(|_| Error::HttpRequestUriInvalid)?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = done_tx.send(conn.await);
    });
    let res = tokio::time::timeout(first_byte_timeout, sender.send_request(req))
        .await
        .map_err(|_| Error::ConnectionReadTimeout)?
        .map_err(Error::from)?;
    let res = res.map(|b| b.map_err(Error::from).boxed_unsync());
    let io = async move {
        match done_rx.await {
            Ok(Err(e)) if e.is_timeout() => Err(Error::HttpResponseTimeout),
            Ok(Err(e)) => Err(e.into()),
            _ => Ok(()),
        }
    };
    Ok((res, Box::new(io)))
}
