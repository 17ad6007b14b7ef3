//! TLS for every listener and every client of the cluster: the PKI
//! ([`pki`]), rustls configurations over the ring provider, and the HTTPS
//! accept loop that serves axum routers with the peer's certificate
//! identity ([`serve`]).

pub mod pki;
pub mod serve;

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub use pki::{Ca, CertInfo, KeyPairPem, LeafSpec, PkiError};

/// Errors building a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("private key: {0}")]
    Key(String),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    #[error("HTTP client: {0}")]
    Client(String),
}

/// The crypto provider every configuration here uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Make ring the process-wide default rustls provider (for libraries that
/// build their own TLS configurations, such as reqwest's plain client).
pub fn install_default_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn roots(ca_pem: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in pki::certs_from_pem(ca_pem).map_err(TlsError::Certificate)? {
        roots
            .add(c)
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(TlsError::Certificate("no CA certificate".into()));
    }
    Ok(roots)
}

fn chain_and_key(
    pair: &KeyPairPem,
) -> Result<
    (
        Vec<CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ),
    TlsError,
> {
    let chain = pki::certs_from_pem(&pair.cert).map_err(TlsError::Certificate)?;
    let key = pki::key_from_pem(&pair.key).map_err(TlsError::Key)?;
    Ok((chain, key))
}

/// The application protocols a server offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// HTTP/2 first (one multiplexed connection per client), HTTP/1.1 for
    /// clients that need an upgrade (exec's WebSocket) or know no better.
    H2AndHttp11,
    /// HTTP/1.1 only (the agent's API: exec upgrades pass through it).
    Http11,
}

impl Alpn {
    fn protocols(self) -> Vec<Vec<u8>> {
        match self {
            Alpn::H2AndHttp11 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Alpn::Http11 => vec![b"http/1.1".to_vec()],
        }
    }
}

/// Whether a server asks clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Verified against the client CA when sent; other credentials may
    /// authenticate the request instead (the API server).
    Optional,
    /// The handshake fails without one (the agent's kubelet API).
    Required,
}

/// A server configuration for `identity`, verifying client certificates
/// against `client_ca_pem`, offering `alpn`.
pub fn server_config(
    identity: &KeyPairPem,
    client_ca_pem: &str,
    auth: ClientAuth,
    alpn: Alpn,
) -> Result<Arc<ServerConfig>, TlsError> {
    let (chain, key) = chain_and_key(identity)?;
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(client_ca_pem)?), provider());
    let verifier = match auth {
        ClientAuth::Optional => verifier.allow_unauthenticated(),
        ClientAuth::Required => verifier,
    }
    .build()
    .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = alpn.protocols();
    Ok(Arc::new(config))
}

/// A client configuration that trusts only `ca_pem` and presents
/// `identity` when given. It offers HTTP/1.1 only; an HTTP client that can
/// multiplex adds `h2` (see [`http_client`]).
pub fn client_config(
    ca_pem: &str,
    identity: Option<&KeyPairPem>,
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_pem)?);
    let mut config = match identity {
        Some(id) => {
            let (chain, key) = chain_and_key(id)?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// An HTTP client for cluster endpoints: trusts only `ca_pem`, presents
/// `identity` when given, and speaks HTTP/2 where the server offers it (all
/// of a client's requests and watches share one connection).
pub fn http_client(
    ca_pem: &str,
    identity: Option<&KeyPairPem>,
) -> Result<reqwest::Client, TlsError> {
    let mut config = client_config(ca_pem, identity)?;
    config.alpn_protocols = Alpn::H2AndHttp11.protocols();
    build_http(config)
}

/// The client one server uses to reach the others (Raft RPCs, forwarded
/// writes, joins): [`http_client`] whose connections leave from `local`
/// when the server listens on one address, so peers (and firewall rules)
/// see the server's own address as the source, not the host's default.
pub fn peer_http_client(
    ca_pem: &str,
    identity: &KeyPairPem,
    local: Option<std::net::IpAddr>,
) -> Result<reqwest::Client, TlsError> {
    let mut config = client_config(ca_pem, Some(identity))?;
    config.alpn_protocols = Alpn::H2AndHttp11.protocols();
    install_default_provider();
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .no_proxy()
        .local_address(local)
        .build()
        .map_err(|e| TlsError::Client(e.to_string()))
}

/// An HTTP/1.1-only client (for requests that upgrade the connection:
/// the API server passing exec through to an agent).
pub fn http1_client(
    ca_pem: &str,
    identity: Option<&KeyPairPem>,
) -> Result<reqwest::Client, TlsError> {
    build_http(client_config(ca_pem, identity)?)
}

/// A reqwest client over a prepared TLS configuration (its ALPN decides
/// HTTP/2 or HTTP/1.1).
pub fn build_http(config: ClientConfig) -> Result<reqwest::Client, TlsError> {
    install_default_provider();
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .no_proxy()
        .build()
        .map_err(|e| TlsError::Client(e.to_string()))
}

/// An HTTP client that accepts any server certificate. Used only to fetch
/// the cluster CA before joining, whose hash is then checked against the
/// join token before any secret is sent.
pub fn insecure_http_client() -> Result<reqwest::Client, TlsError> {
    install_default_provider();
    reqwest::Client::builder()
        .use_preconfigured_tls(insecure_client_config(None)?)
        .no_proxy()
        .build()
        .map_err(|e| TlsError::Client(e.to_string()))
}

/// Accepts any server certificate (signatures are still checked).
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client configuration that does not verify the server (a kubeconfig's
/// `insecure-skip-tls-verify: true`, and the CA fetch before a join).
pub fn insecure_client_config(identity: Option<&KeyPairPem>) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider())));
    let mut config = match identity {
        Some(id) => {
            let (chain, key) = chain_and_key(id)?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
