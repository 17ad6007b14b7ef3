//! The Ingress gateway every agent runs (`--ingress-listen`, TLS on
//! `--ingress-tls-listen`): networking.k8s.io/v1 Ingresses of our class,
//! host and path rules, default backends, TLS from `kubernetes.io/tls`
//! Secrets chosen by SNI.
//!
//! A request goes Ingress → Service → a ready endpoint on any node. When
//! the endpoint is an HTTP function on this node, the gateway calls it
//! in-process (no socket, no extra hop); otherwise it forwards over HTTP.
//! No rule: 404. A Service that is missing or has no ready endpoint: 503.
//!
//! [`route`] decides (pure).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use wasmkube_runtime::{BoxError, HttpBody};

use super::functions::{self, Functions};
use super::services::{Route, ServiceProxy};
use crate::api::{meta, resources};
use crate::client::runtime::{self, Cache};
use crate::client::Client;
use crate::controllers::CancelToken;

#[cfg(test)]
use crate::api::ingress::DEFAULT_CLASS_ANNOTATION;
pub use crate::api::ingress::{is_ours, service_port, CLASS, CONTROLLER};

/// Where a request goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub namespace: String,
    /// The `backend` object of the rule (`service: {name, port}`).
    pub backend: Value,
}

/// How well a rule's host matches: 2 exact, 1 wildcard, 0 any host.
fn host_rank(rule_host: &str, host: &str) -> Option<u8> {
    if rule_host.is_empty() {
        return Some(0);
    }
    if rule_host.eq_ignore_ascii_case(host) {
        return Some(2);
    }
    let suffix = rule_host.strip_prefix("*.")?;
    let (first, rest) = host.split_once('.')?;
    (!first.is_empty() && rest.eq_ignore_ascii_case(suffix)).then_some(1)
}

/// Whether `path` matches a rule path of `kind`; the matched length.
fn path_match(rule_path: &str, kind: &str, path: &str) -> Option<usize> {
    match kind {
        "Exact" => (rule_path == path).then_some(rule_path.len()),
        // Prefix (and ImplementationSpecific, which we treat as Prefix):
        // element-wise on `/`, so /foo matches /foo and /foo/bar, not /foobar
        _ => {
            let want: Vec<&str> = rule_path.split('/').filter(|s| !s.is_empty()).collect();
            let have: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
            (have.len() >= want.len() && have[..want.len()] == want[..])
                .then_some(rule_path.trim_end_matches('/').len())
        }
    }
}

/// The backend for `host` and `path` among `ingresses` (ours only): the
/// best host match (exact, then wildcard, then any), then the longest
/// path, Exact before Prefix; else a default backend; else None (404).
pub fn route(
    ingresses: &[Arc<Value>],
    classes: &[Arc<Value>],
    host: &str,
    path: &str,
) -> Option<Target> {
    let mut ours: Vec<&Arc<Value>> = ingresses
        .iter()
        .filter(|i| !meta::is_deleting(i) && is_ours(i, classes))
        .collect();
    // the oldest Ingress wins ties, as controllers commonly do
    ours.sort_by_key(|i| {
        (
            i["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            meta::name(i).to_string(),
        )
    });
    let mut best: Option<((u8, usize, bool), Target)> = None;
    for ing in &ours {
        for rule in ing["spec"]["rules"].as_array().into_iter().flatten() {
            let Some(hr) = host_rank(rule["host"].as_str().unwrap_or(""), host) else {
                continue;
            };
            for p in rule["http"]["paths"].as_array().into_iter().flatten() {
                let kind = p["pathType"].as_str().unwrap_or("Prefix");
                let rule_path = p["path"].as_str().unwrap_or("/");
                let Some(len) = path_match(rule_path, kind, path) else {
                    continue;
                };
                let key = (hr, len, kind == "Exact");
                if best.as_ref().is_none_or(|(k, _)| key > *k) {
                    best = Some((
                        key,
                        Target {
                            namespace: meta::namespace(ing).to_string(),
                            backend: p["backend"].clone(),
                        },
                    ));
                }
            }
        }
    }
    best.map(|(_, t)| t).or_else(|| {
        ours.iter()
            .find(|i| i["spec"]["defaultBackend"].is_object())
            .map(|i| Target {
                namespace: meta::namespace(i).to_string(),
                backend: i["spec"]["defaultBackend"].clone(),
            })
    })
}

/// The gateway's caches and the node's local functions.
pub struct Gateway {
    pub ingresses: Arc<Cache>,
    pub classes: Arc<Cache>,
    pub secrets: Arc<Cache>,
    proxy: Arc<ServiceProxy>,
    functions: Arc<Functions>,
    http: reqwest::Client,
    /// Parsed certificates by secret key and resourceVersion.
    certs: Mutex<HashMap<String, (String, Arc<rustls::sign::CertifiedKey>)>>,
}

/// Marks a request a gateway forwarded (loop detection).
const HOP_MARK: &str = "x-wasmkube-gateway";

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

impl Gateway {
    pub fn new(proxy: Arc<ServiceProxy>, functions: Arc<Functions>) -> Arc<Self> {
        Arc::new(Self {
            ingresses: Cache::new(),
            classes: Cache::new(),
            secrets: Cache::new(),
            proxy,
            functions,
            http: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
            certs: Mutex::default(),
        })
    }

    /// Watch Ingresses and IngressClasses, fetch the TLS Secrets they name
    /// (an agent may read only those); serve on the given addresses until
    /// `cancel`.
    pub async fn run(
        self: Arc<Self>,
        client: Client,
        listen: Option<SocketAddr>,
        tls_listen: Option<SocketAddr>,
        cancel: CancelToken,
    ) {
        let mut tasks = Vec::new();
        let changed = Arc::new(tokio::sync::Notify::new());
        for (plural, cache) in [
            ("ingresses", self.ingresses.clone()),
            ("ingressclasses", self.classes.clone()),
        ] {
            let res = resources::lookup(plural).expect("served kind");
            let changed = changed.clone();
            tasks.push(tokio::spawn(runtime::reflect(
                client.clone(),
                res,
                cache,
                move |_| changed.notify_one(),
                cancel.clone(),
            )));
        }
        tasks.push(tokio::spawn(self.clone().fetch_tls_secrets(
            client.clone(),
            changed,
            cancel.clone(),
        )));
        if let Some(addr) = listen {
            match TcpListener::bind(addr).await {
                Ok(l) => {
                    tracing::info!(%addr, "ingress gateway listening");
                    tasks.push(tokio::spawn(self.clone().serve(l, None, cancel.clone())));
                }
                Err(e) => tracing::warn!(%addr, error = %e, "ingress gateway cannot listen"),
            }
        }
        if let Some(addr) = tls_listen {
            match TcpListener::bind(addr).await {
                Ok(l) => {
                    tracing::info!(%addr, "ingress gateway listening (TLS)");
                    let config = self.tls_config();
                    tasks.push(tokio::spawn(self.clone().serve(
                        l,
                        Some(tokio_rustls::TlsAcceptor::from(config)),
                        cancel.clone(),
                    )));
                }
                Err(e) => tracing::warn!(%addr, error = %e, "ingress gateway cannot listen (TLS)"),
            }
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Keep the TLS Secrets the Ingresses name, fetched one by one: when an
    /// Ingress changes and every few seconds (so a renewed certificate is
    /// picked up).
    async fn fetch_tls_secrets(
        self: Arc<Self>,
        client: Client,
        changed: Arc<tokio::sync::Notify>,
        mut cancel: CancelToken,
    ) {
        let secrets = resources::lookup("secrets").expect("secrets are served");
        loop {
            let wanted: std::collections::BTreeSet<(String, String)> = self
                .ingresses
                .all()
                .iter()
                .flat_map(|ing| {
                    let ns = meta::namespace(ing).to_string();
                    ing["spec"]["tls"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(move |t| {
                            Some((ns.clone(), t["secretName"].as_str()?.to_string()))
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            for (ns, name) in &wanted {
                match client.get(secrets, Some(ns), name).await {
                    Ok(s) => self.secrets.seed(s),
                    Err(e) if e.is_not_found() => {
                        self.secrets.retain(|k| k != format!("{ns}/{name}"))
                    }
                    Err(e) => tracing::debug!(secret = %name, error = %e, "fetching a TLS secret"),
                }
            }
            self.secrets.retain(|k| {
                k.split_once('/')
                    .is_some_and(|(ns, n)| wanted.contains(&(ns.to_string(), n.to_string())))
            });
            tokio::select! {
                _ = changed.notified() => {}
                _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => {}
                _ = cancel.wait_for(|s| *s) => return,
            }
        }
    }

    fn tls_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SniResolver(self.clone())));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        mut cancel: CancelToken,
    ) {
        loop {
            let (conn, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(_) => continue,
                },
                _ = cancel.wait_for(|s| *s) => return,
            };
            let _ = conn.set_nodelay(true);
            let gw = self.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let https = tls.is_some();
                let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let gw = gw.clone();
                    async move { Ok::<_, Infallible>(gw.handle(req, peer, https).await) }
                });
                let builder = hyper::server::conn::http1::Builder::new();
                match tls {
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(conn), service).await;
                    }
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(conn).await {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                }
            });
        }
    }

    /// Route and answer one request.
    pub async fn handle(
        &self,
        req: http::Request<Incoming>,
        peer: SocketAddr,
        https: bool,
    ) -> http::Response<HttpBody> {
        // a request that already passed a gateway of ours is a routing loop
        // (an endpoint address that is a gateway's own); never forward it again
        if req.headers().contains_key(HOP_MARK) {
            return functions::text(508, "request loop: the endpoint is an Ingress gateway");
        }
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().host())
            .unwrap_or("")
            .to_string();
        let host = host
            .rsplit_once(':')
            .map_or(host.as_str(), |(h, _)| h)
            .to_string();
        let path = req.uri().path().to_string();
        let Some(target) = route(&self.ingresses.all(), &self.classes.all(), &host, &path) else {
            return functions::text(
                404,
                &format!("no Ingress rule for host {host:?} and path {path:?}"),
            );
        };
        let Some(svc_name) = target.backend["service"]["name"].as_str() else {
            return functions::text(
                503,
                "the Ingress backend is not a Service (resource backends are not supported)",
            );
        };
        let key = format!("{}/{svc_name}", target.namespace);
        let Some(svc) = self.proxy.services.get(&key) else {
            return functions::text(503, &format!("service {key} not found"));
        };
        let Some(port) = service_port(&svc, &target.backend) else {
            return functions::text(
                503,
                &format!(
                    "service {key} has no port {}",
                    target.backend["service"]["port"]
                ),
            );
        };
        let route = Route {
            service: key.clone(),
            port,
        };
        let candidates = self.proxy.ready_candidates(&route, peer.ip()).await;
        if candidates.is_empty() {
            return functions::text(503, &format!("service {key} has no ready endpoints"));
        }
        let mut req = req.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync());
        let headers = req.headers_mut();
        if let Ok(v) = peer.ip().to_string().parse() {
            headers.append("x-forwarded-for", v);
        }
        if let Ok(v) = host.parse() {
            headers.insert("x-forwarded-host", v);
        }
        headers.insert(HOP_MARK, http::HeaderValue::from_static("1"));
        headers.insert(
            "x-forwarded-proto",
            http::HeaderValue::from_static(if https { "https" } else { "http" }),
        );
        // a local HTTP function: straight into the runtime
        if let Some(local) = candidates.iter().find_map(|a| self.functions.get(a)) {
            return local.call(req).await;
        }
        self.forward(req, &candidates).await
    }

    /// Forward to the first endpoint that takes the connection.
    async fn forward(
        &self,
        req: http::Request<HttpBody>,
        candidates: &[SocketAddr],
    ) -> http::Response<HttpBody> {
        let (parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let mut headers = parts.headers.clone();
        for h in HOP_BY_HOP {
            headers.remove(h);
        }
        // a request body streams through once: with one, only the first
        // endpoint is tried; without, a refused connection moves on
        let bodiless = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .is_none_or(|v| v == "0")
            && !parts.headers.contains_key(http::header::TRANSFER_ENCODING);
        let tries = if bodiless { candidates.len() } else { 1 };
        let mut body = Some(body);
        let mut last_error = String::new();
        for addr in &candidates[..tries] {
            // a streamed body can be sent once: only the first attempt carries it
            let b = match body.take() {
                Some(b) => reqwest::Body::wrap_stream(http_body_util::BodyDataStream::new(b)),
                None => reqwest::Body::from(Vec::new()),
            };
            let sent = self
                .http
                .request(parts.method.clone(), format!("http://{addr}{path}"))
                .headers(headers.clone())
                .body(b)
                .send()
                .await;
            match sent {
                Ok(resp) => {
                    let mut out = http::Response::builder().status(resp.status());
                    for (k, v) in resp.headers() {
                        if !HOP_BY_HOP.contains(&k.as_str()) {
                            out = out.header(k, v);
                        }
                    }
                    let stream = resp.bytes_stream();
                    use futures::TryStreamExt;
                    let body = http_body_util::StreamBody::new(
                        stream
                            .map_ok(hyper::body::Frame::data)
                            .map_err(|e| Box::new(e) as BoxError),
                    );
                    return out
                        .body(BodyExt::boxed_unsync(body))
                        .unwrap_or_else(|_| functions::text(502, "bad upstream response"));
                }
                Err(e) if e.is_connect() => {
                    last_error = format!("{addr}: {e}");
                    continue;
                }
                Err(e) => return functions::text(502, &format!("upstream {addr}: {e}")),
            }
        }
        functions::text(
            503,
            &format!("no endpoint took the connection ({last_error})"),
        )
    }

    /// The certificate for `sni`, from the TLS Secret an Ingress of ours names for it.
    fn certificate(&self, sni: &str) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let classes = self.classes.all();
        for ing in self.ingresses.all() {
            if !is_ours(&ing, &classes) {
                continue;
            }
            for tls in ing["spec"]["tls"].as_array().into_iter().flatten() {
                let hosts = tls["hosts"].as_array().cloned().unwrap_or_default();
                if !hosts
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|h| host_rank(h, sni).is_some_and(|r| r > 0))
                {
                    continue;
                }
                let Some(secret) = tls["secretName"].as_str() else {
                    continue;
                };
                let key = format!("{}/{secret}", meta::namespace(&ing));
                if let Some(c) = self.parsed(&key) {
                    return Some(c);
                }
            }
        }
        None
    }

    fn parsed(&self, key: &str) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let secret = self.secrets.get(key)?;
        let rv = meta::resource_version(&secret).to_string();
        let mut certs = self.certs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((have, c)) = certs.get(key) {
            if *have == rv {
                return Some(c.clone());
            }
        }
        match certified_key(&secret) {
            Ok(c) => {
                let c = Arc::new(c);
                certs.insert(key.to_string(), (rv, c.clone()));
                Some(c)
            }
            Err(e) => {
                tracing::warn!(secret = %key, error = %e, "unusable TLS secret");
                None
            }
        }
    }
}

/// A `kubernetes.io/tls` Secret's certificate chain and key.
pub fn certified_key(secret: &Value) -> Result<rustls::sign::CertifiedKey, String> {
    use base64::Engine;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let field = |k: &str| -> Result<Vec<u8>, String> {
        let b64 = secret["data"][k]
            .as_str()
            .ok_or_else(|| format!("data[{k:?}] is missing"))?;
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("data[{k:?}]: {e}"))
    };
    let crt = field("tls.crt")?;
    let key = field("tls.key")?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&crt)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.crt: {e}"))?;
    if chain.is_empty() {
        return Err("tls.crt holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| format!("tls.key: {e}"))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("tls.key: {e}"))?;
    Ok(rustls::sign::CertifiedKey::new(chain, signer))
}

#[derive(Debug)]
struct SniResolver(Arc<Gateway>);

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gateway")
    }
}

impl rustls::server::ResolvesServerCert for SniResolver {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.0.certificate(hello.server_name()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn class() -> Arc<Value> {
        Arc::new(json!({"metadata": {"name": "wasmkube",
            "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
            "spec": {"controller": CONTROLLER}}))
    }

    fn ing(name: &str, spec: Value) -> Arc<Value> {
        Arc::new(json!({"metadata": {"name": name, "namespace": "d",
            "creationTimestamp": format!("2026-01-01T00:00:0{}Z", name.len())}, "spec": spec}))
    }

    fn svc_of(t: Option<Target>) -> Option<String> {
        t.map(|t| t.backend["service"]["name"].as_str().unwrap().to_string())
    }

    #[test]
    fn rules_match_by_host_then_longest_path_exact_first() {
        let b = |s: &str| json!({"service": {"name": s, "port": {"number": 80}}});
        let rules = ing(
            "a",
            json!({"rules": [
            {"host": "shop.example", "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": b("front")},
                {"path": "/api", "pathType": "Prefix", "backend": b("api")},
                {"path": "/api/v1", "pathType": "Exact", "backend": b("exact")}]}},
            {"host": "*.example", "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": b("wild")}]}},
            {"http": {"paths": [{"path": "/any", "pathType": "ImplementationSpecific", "backend": b("any")}]}}]}),
        );
        let all = vec![rules];
        let classes = vec![class()];
        let r = |h: &str, p: &str| svc_of(route(&all, &classes, h, p));
        assert_eq!(r("shop.example", "/"), Some("front".into()));
        assert_eq!(r("shop.example", "/api/x"), Some("api".into()));
        assert_eq!(
            r("shop.example", "/apix"),
            Some("front".into()),
            "element-wise prefix"
        );
        assert_eq!(r("shop.example", "/api/v1"), Some("exact".into()));
        assert_eq!(r("SHOP.example", "/api/v1/more"), Some("api".into()));
        assert_eq!(r("blog.example", "/x"), Some("wild".into()));
        assert_eq!(r("a.b.example", "/x"), None, "a wildcard covers one label");
        assert_eq!(r("other", "/any/thing"), Some("any".into()));
        assert_eq!(r("other", "/"), None);
    }

    #[test]
    fn default_backends_and_classes() {
        let b = json!({"service": {"name": "fallback", "port": {"name": "http"}}});
        let with_default = ing("a", json!({"defaultBackend": b}));
        let classes = vec![class()];
        assert_eq!(
            svc_of(route(
                std::slice::from_ref(&with_default),
                &classes,
                "x",
                "/y"
            )),
            Some("fallback".into())
        );
        let other_class = ing(
            "b",
            json!({"ingressClassName": "nginx", "defaultBackend": b}),
        );
        assert!(route(&[other_class], &classes, "x", "/").is_none());
        // without a default class, an Ingress without a class is not ours
        let not_default =
            Arc::new(json!({"metadata": {"name": "wasmkube"}, "spec": {"controller": CONTROLLER}}));
        assert!(route(&[with_default], &[not_default], "x", "/").is_none());
        let svc = json!({"spec": {"ports": [{"name": "http", "port": 80}, {"name": "admin", "port": 9000}]}});
        assert_eq!(service_port(&svc, &b), Some(80));
        assert_eq!(
            service_port(
                &svc,
                &json!({"service": {"name": "s", "port": {"number": 9000}}})
            ),
            Some(9000)
        );
        assert_eq!(
            service_port(
                &svc,
                &json!({"service": {"name": "s", "port": {"number": 81}}})
            ),
            None
        );
    }
}
