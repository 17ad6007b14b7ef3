//! A client for the wasmkube API, shared by `wkctl`, the controllers and
//! (later) the agent: kubeconfig loading, typed errors carrying the server's
//! `metav1.Status`, and watch streams.

pub mod events;
pub mod kubeconfig;
pub mod runtime;

/// Cancellation for watch and work loops: a watch channel that turns
/// `true` on shutdown.
pub type CancelToken = tokio::sync::watch::Receiver<bool>;

use std::path::Path;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use reqwest::Method;
use serde_json::Value;

use crate::api::resources::Resource;

pub use kubeconfig::Kubeconfig;

/// Errors talking to the API server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a `metav1.Status` failure.
    #[error("Error from server ({reason}): {message}")]
    Api {
        code: u16,
        reason: String,
        message: String,
        status: Value,
    },
    /// The server could not be reached or the connection broke.
    #[error("the connection to the server {server} was refused or failed: {source}")]
    Connect {
        server: String,
        #[source]
        source: reqwest::Error,
    },
    /// The response was not the JSON expected.
    #[error("invalid response from the server: {0}")]
    Decode(String),
    /// The kubeconfig could not be read.
    #[error(transparent)]
    Kubeconfig(#[from] kubeconfig::KubeconfigError),
    /// The TLS configuration could not be built.
    #[error("TLS: {0}")]
    Tls(String),
}

impl ClientError {
    /// The HTTP code of a server-side failure.
    pub fn code(&self) -> Option<u16> {
        match self {
            ClientError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether the server said NotFound.
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(404)
    }
}

/// The `Accept` header asking for server-side printing, as kubectl sends it.
pub const TABLE: &str =
    "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";

/// One watch event.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    /// ADDED, MODIFIED, DELETED, BOOKMARK or ERROR.
    pub event_type: String,
    /// Parsed with room for exactly its fields ([`crate::json::shrink`]).
    pub object: Value,
}

/// How a client proves who it is, besides a client certificate (which
/// lives in the TLS configuration).
#[derive(Clone)]
pub enum Credentials {
    /// Nothing beyond the client certificate, if any.
    None,
    /// A fixed bearer token.
    Bearer(String),
    /// A bearer token asked for on every request (refreshed by its source).
    Source(Arc<dyn Fn() -> String + Send + Sync>),
}

impl Credentials {
    /// The `Authorization` header value, if any.
    pub fn header(&self) -> Option<String> {
        match self {
            Credentials::None => None,
            Credentials::Bearer(t) => Some(format!("Bearer {t}")),
            Credentials::Source(f) => Some(format!("Bearer {}", f())),
        }
    }
}

/// An authenticated API client over TLS. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    servers: Arc<Servers>,
    credentials: Credentials,
    /// The TLS configuration of `http`, for connections made by hand (exec).
    tls: Arc<rustls::ClientConfig>,
    /// `User-Agent`: the server names this client's field manager after it.
    user_agent: Arc<str>,
    /// The informers this client's controllers share, if any.
    informers: Option<Arc<runtime::Informers>>,
}

/// The API servers a client (and its clones) may use: requests go to the
/// current one; when it cannot be reached, the next request goes to the
/// next one, as an agent fails over between the servers of an HA cluster.
#[derive(Debug)]
struct Servers {
    list: std::sync::RwLock<Vec<String>>,
    current: std::sync::atomic::AtomicUsize,
}

impl Servers {
    fn new(server: String) -> Self {
        Servers {
            list: std::sync::RwLock::new(vec![server]),
            current: Default::default(),
        }
    }

    fn current(&self) -> String {
        let list = self.list.read().unwrap_or_else(|e| e.into_inner());
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed) % list.len().max(1);
        list.get(i).cloned().unwrap_or_default()
    }

    /// `failed` could not be reached: move on (unless another request
    /// already did).
    fn failed(&self, failed: &str) {
        let list = self.list.read().unwrap_or_else(|e| e.into_inner());
        if list.len() < 2 {
            return;
        }
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed) % list.len();
        if list[i] == failed {
            let next = (i + 1) % list.len();
            self.current
                .store(next, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(from = %failed, to = %list[next], "API server unreachable: using another");
        }
    }

    fn set(&self, servers: Vec<String>) {
        if servers.is_empty() {
            return;
        }
        let now = self.current();
        let mut list = self.list.write().unwrap_or_else(|e| e.into_inner());
        if *list == servers {
            return;
        }
        let i = servers.iter().position(|s| *s == now).unwrap_or(0);
        *list = servers;
        self.current.store(i, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Client {
    /// A client for `server` (`https://HOST:PORT`) that trusts `ca_pem`,
    /// presents `identity` if given, and sends `credentials`.
    pub fn new(
        server: impl Into<String>,
        ca_pem: &str,
        identity: Option<&crate::tls::KeyPairPem>,
        credentials: Credentials,
    ) -> Result<Self, ClientError> {
        let tls = crate::tls::client_config(ca_pem, identity)
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        Self::with_tls(server, tls, credentials)
    }

    fn with_tls(
        server: impl Into<String>,
        tls: rustls::ClientConfig,
        credentials: Credentials,
    ) -> Result<Self, ClientError> {
        // requests and watches share one HTTP/2 connection where offered;
        // connections made by hand (exec's WebSocket) stay HTTP/1.1
        let mut multiplexed = tls.clone();
        multiplexed.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let http =
            crate::tls::build_http(multiplexed).map_err(|e| ClientError::Tls(e.to_string()))?;
        Ok(Self {
            http,
            servers: Arc::new(Servers::new(
                server.into().trim_end_matches('/').to_string(),
            )),
            credentials,
            tls: Arc::new(tls),
            user_agent: format!("wasmkube/{}", env!("CARGO_PKG_VERSION")).into(),
            informers: None,
        })
    }

    /// A client from a kubeconfig file's current context.
    pub fn from_kubeconfig(path: &Path) -> Result<Self, ClientError> {
        Self::from_config(&Kubeconfig::load(path)?)
    }

    /// A client from a loaded kubeconfig.
    pub fn from_config(kc: &Kubeconfig) -> Result<Self, ClientError> {
        let credentials = match &kc.token {
            Some(t) => Credentials::Bearer(t.clone()),
            None => Credentials::None,
        };
        if kc.insecure {
            let tls = crate::tls::insecure_client_config(kc.client_cert.as_ref())
                .map_err(|e| ClientError::Tls(e.to_string()))?;
            return Self::with_tls(kc.server.clone(), tls, credentials);
        }
        let ca = kc.ca.as_deref().ok_or_else(|| {
            ClientError::Tls(format!(
                "the kubeconfig gives no certificate-authority for {}",
                kc.server
            ))
        })?;
        Self::new(kc.server.clone(), ca, kc.client_cert.as_ref(), credentials)
    }

    /// The same server and TLS identity with other credentials.
    pub fn with_credentials(&self, credentials: Credentials) -> Self {
        Self {
            credentials,
            ..self.clone()
        }
    }

    /// The same client, whose controllers subscribe to `informers` for the
    /// kinds they share ([`runtime::run_controller`]).
    pub fn with_informers(&self, informers: Arc<runtime::Informers>) -> Self {
        Self {
            informers: Some(informers),
            ..self.clone()
        }
    }

    pub(crate) fn informers(&self) -> Option<&Arc<runtime::Informers>> {
        self.informers.as_ref()
    }

    /// The same client under another name (`NAME/VERSION` as its user
    /// agent), so its writes are recorded under that field manager.
    pub fn with_name(&self, name: &str) -> Self {
        Self {
            user_agent: format!("{name}/{}", env!("CARGO_PKG_VERSION")).into(),
            ..self.clone()
        }
    }

    /// The server URL in use.
    pub fn server(&self) -> String {
        self.servers.current()
    }

    /// Every API server this client may use (`https://HOST:PORT`), e.g.
    /// from the `default/kubernetes` Endpoints; the one in use stays if
    /// it is listed.
    pub fn set_servers(&self, servers: Vec<String>) {
        self.servers.set(servers);
    }

    /// The `Authorization` header value, for connections this client does
    /// not make itself (exec's WebSocket).
    pub fn authorization(&self) -> Option<String> {
        self.credentials.header()
    }

    /// The TLS configuration, for connections this client does not make itself.
    pub fn tls_config(&self) -> Arc<rustls::ClientConfig> {
        self.tls.clone()
    }

    /// A TLS connection to the server, for protocols this client does not
    /// speak itself (exec's WebSocket).
    pub async fn connect(
        &self,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, ClientError> {
        let server = self.server();
        let fail = |e: String| ClientError::Tls(format!("connecting to {server}: {e}"));
        let url = reqwest::Url::parse(&server).map_err(|e| fail(e.to_string()))?;
        let host = url
            .host_str()
            .ok_or_else(|| fail("no host".into()))?
            .trim_matches(['[', ']'])
            .to_string();
        let port = url.port_or_known_default().unwrap_or(443);
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| fail(e.to_string()))?;
        let name =
            rustls::pki_types::ServerName::try_from(host).map_err(|e| fail(e.to_string()))?;
        tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| fail(e.to_string()))
    }

    /// A request with this client's credentials.
    pub fn request_builder(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let req = self
            .http
            .request(method, format!("{}{path}", self.server()))
            .header(reqwest::header::USER_AGENT, &*self.user_agent);
        match self.credentials.header() {
            Some(h) => req.header(reqwest::header::AUTHORIZATION, h),
            None => req,
        }
    }

    fn connect_err(&self, source: reqwest::Error) -> ClientError {
        let server = self.server();
        if source.is_connect() || source.is_timeout() {
            self.servers.failed(&server);
        }
        ClientError::Connect { server, source }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&Value, &str)>,
    ) -> Result<reqwest::Response, ClientError> {
        self.send_accepting(method, path, body, None).await
    }

    async fn send_accepting(
        &self,
        method: Method,
        path: &str,
        body: Option<(&Value, &str)>,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, ClientError> {
        let mut req = self.request_builder(method, path);
        if let Some(a) = accept {
            req = req.header(reqwest::header::ACCEPT, a);
        }
        if let Some((b, ct)) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, ct)
                .body(b.to_string());
        }
        let resp = req.send().await.map_err(|e| self.connect_err(e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let code = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| self.connect_err(e))?;
        let status: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| serde_json::json!({"message": text}));
        Err(ClientError::Api {
            code,
            reason: status["reason"].as_str().unwrap_or("Unknown").to_string(),
            message: status["message"].as_str().unwrap_or(&text).to_string(),
            status,
        })
    }

    /// GET `path` and return the raw response (logs, other streams).
    pub async fn get_raw(&self, path: &str) -> Result<reqwest::Response, ClientError> {
        self.send(Method::GET, path, None).await
    }

    /// Send a request with an optional JSON body and decode the JSON answer.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        self.request_as(method, path, body, "application/json")
            .await
    }

    /// Like [`Client::request`] with an explicit content type (patches).
    pub async fn request_as(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        content_type: &str,
    ) -> Result<Value, ClientError> {
        let resp = self
            .send(method, path, body.map(|b| (b, content_type)))
            .await?;
        let bytes = resp.bytes().await.map_err(|e| self.connect_err(e))?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// GET one object.
    pub async fn get(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Value, ClientError> {
        self.request(Method::GET, &res.object_path(ns, name), None)
            .await
    }

    /// LIST with an optional query string (`labelSelector=...`).
    pub async fn list(
        &self,
        res: &Resource,
        ns: Option<&str>,
        query: &str,
    ) -> Result<Value, ClientError> {
        let q = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        self.request(
            Method::GET,
            &format!("{}{q}", res.collection_path(ns)),
            None,
        )
        .await
    }

    /// CREATE.
    pub async fn create(
        &self,
        res: &Resource,
        ns: Option<&str>,
        obj: &Value,
    ) -> Result<Value, ClientError> {
        self.request(Method::POST, &res.collection_path(ns), Some(obj))
            .await
    }

    /// UPDATE (PUT).
    pub async fn replace(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        obj: &Value,
    ) -> Result<Value, ClientError> {
        self.request(Method::PUT, &res.object_path(ns, name), Some(obj))
            .await
    }

    /// PATCH with a JSON merge patch.
    pub async fn merge_patch(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        patch: &Value,
    ) -> Result<Value, ClientError> {
        self.request_as(
            Method::PATCH,
            &res.object_path(ns, name),
            Some(patch),
            "application/merge-patch+json",
        )
        .await
    }

    /// DELETE one object.
    pub async fn delete(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Value, ClientError> {
        self.request(Method::DELETE, &res.object_path(ns, name), None)
            .await
    }

    /// GET `path` as a `meta.k8s.io/v1` Table (the server's columns).
    pub async fn table(&self, path: &str) -> Result<Value, ClientError> {
        let resp = self
            .send_accepting(Method::GET, path, None, Some(TABLE))
            .await?;
        let bytes = resp.bytes().await.map_err(|e| self.connect_err(e))?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// WATCH a collection; `query` carries selectors and `resourceVersion`.
    pub async fn watch(
        &self,
        res: &Resource,
        ns: Option<&str>,
        query: &str,
    ) -> Result<impl Stream<Item = Result<WatchEvent, ClientError>> + use<>, ClientError> {
        self.watch_as(res, ns, query, false).await
    }

    /// WATCH a collection; with `tables` every event's object is a one-row Table.
    pub async fn watch_as(
        &self,
        res: &Resource,
        ns: Option<&str>,
        query: &str,
        tables: bool,
    ) -> Result<impl Stream<Item = Result<WatchEvent, ClientError>> + use<>, ClientError> {
        let sep = if query.is_empty() { "" } else { "&" };
        let path = format!("{}?watch=true{sep}{query}", res.collection_path(ns));
        let resp = self
            .send_accepting(Method::GET, &path, None, tables.then_some(TABLE))
            .await?;
        let server = self.server();
        let bytes = resp.bytes_stream();
        Ok(lines(bytes).map(move |line| {
            let line = line.map_err(|source| ClientError::Connect {
                server: server.clone(),
                source,
            })?;
            // with no spare room: informers keep these objects
            let mut v = crate::json::from_slice_shrunk(&line)
                .map_err(|e| ClientError::Decode(e.to_string()))?;
            Ok(WatchEvent {
                event_type: v["type"].as_str().unwrap_or_default().to_string(),
                object: v.get_mut("object").map(Value::take).unwrap_or_default(),
            })
        }))
    }
}

/// Split a byte stream into lines.
fn lines<S>(bytes: S) -> impl Stream<Item = Result<Vec<u8>, reqwest::Error>>
where
    S: Stream<Item = Result<bytes::Bytes, reqwest::Error>> + Unpin,
{
    futures::stream::unfold(
        (bytes, Vec::<u8>::new(), false),
        |(mut s, mut buf, done)| async move {
            loop {
                if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    if line.len() > 1 {
                        return Some((Ok(line[..line.len() - 1].to_vec()), (s, buf, done)));
                    }
                    continue;
                }
                if done {
                    return None;
                }
                match s.next().await {
                    Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                    Some(Err(e)) => return Some((Err(e), (s, buf, true))),
                    None => {
                        if buf.is_empty() {
                            return None;
                        }
                        let line = std::mem::take(&mut buf);
                        return Some((Ok(line), (s, buf, true)));
                    }
                }
            }
        },
    )
}
