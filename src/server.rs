//! `wk server`: the control plane in one process: store, API server and
//! controllers, on one data directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::api::resources;
use crate::apiserver::auth::Security;
use crate::apiserver::{self, handlers, request::Params, ApiState};
use crate::auth::{policy, token};
pub use crate::client::kubeconfig::{default_data_dir, kubeconfig_path};
use crate::client::{Client, Credentials, Kubeconfig};
use crate::store::{Store, StoreConfig, StoreError};
use crate::tls::{self, Ca, KeyPairPem, LeafSpec};

impl From<crate::client::ClientError> for ServerError {
    fn from(e: crate::client::ClientError) -> Self {
        ServerError::Client(Box::new(e))
    }
}

/// Namespaces that exist from the start.
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

pub use crate::api::validation::UNDELETABLE_NAMESPACES;

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("creating {name}: {source}")]
    Bootstrap {
        name: String,
        #[source]
        source: crate::api::ApiError,
    },
    #[error(transparent)]
    Kubeconfig(#[from] crate::client::kubeconfig::KubeconfigError),
    #[error(transparent)]
    Agent(#[from] crate::agent::AgentError),
    #[error("certificates in {dir}: {source}")]
    Pki {
        dir: PathBuf,
        #[source]
        source: crate::tls::PkiError,
    },
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("service account signing key: {0}")]
    SigningKey(#[from] crate::auth::token::TokenError),
    #[error("API client: {0}")]
    Client(#[source] Box<crate::client::ClientError>),
    #[error("audit log {path}: {source}")]
    Audit {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("joining the embedded agent: {0}")]
    Join(crate::api::ApiError),
    #[error("secrets encryption: {0}")]
    Encryption(#[from] crate::store::encryption::EncryptionError),
    #[error("joining the cluster at {url}: {detail}")]
    JoinCluster { url: String, detail: String },
    #[error(
        "this server (id {0}) was removed from the cluster; wipe its data directory to join again"
    )]
    Removed(crate::store::NodeId),
    #[error(
        "the store stopped: {0}; exiting so that the server starts again from what is on disk"
    )]
    StoreStopped(String),
}

/// `--join URL --token TOKEN`: become a member of an existing cluster.
#[derive(Debug, Clone)]
pub struct JoinSpec {
    /// Any server of the cluster, `https://HOST:PORT`.
    pub url: String,
    /// Its server join token (`K10<CA hash>::server:<secret>`).
    pub token: String,
}

/// How to run a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub node_name: String,
    /// Address written to the kubeconfig and given to peers (default: the bound address).
    pub advertise: Option<String>,
    pub watch_history: usize,
    /// How long a change stays in the watch window.
    pub watch_history_age: Duration,
    pub bookmark_interval: Duration,
    /// Raft log entries between snapshots.
    pub snapshot_logs: u64,
    /// Join an existing cluster (only on first start: afterwards the
    /// stored membership is used).
    pub join: Option<JoinSpec>,
    /// Raft heartbeat and election timeouts.
    pub raft_timing: crate::store::Timing,
    /// The embedded node agent (`None`: `--disable-agent`).
    pub agent: Option<crate::agent::AgentConfig>,
    /// The scheduler and controllers.
    pub controllers: crate::controllers::Config,
    /// Extra names and addresses for the serving certificate (`--tls-san`).
    pub tls_sans: Vec<String>,
    /// Where audit events go (`--audit-log-path`), if anywhere.
    pub audit: Option<apiserver::audit::AuditConfig>,
}

/// Where a server keeps the keys Secrets are encrypted with.
pub fn encryption_config_path(data_dir: &Path) -> PathBuf {
    data_dir.join("cred").join("encryption-config.json")
}

/// The server's join token, `K10<CA hash>::server:<secret>`, in
/// `DATA_DIR/token`: made on first start (an older plain token is kept as
/// the secret). Returns the secret.
fn join_token(data_dir: &Path, server_ca: &Ca) -> Result<String, ServerError> {
    let path = data_dir.join("token");
    let hash = tls::pki::sha256_hex(server_ca.cert_pem.as_bytes());
    let existing = std::fs::read_to_string(&path).unwrap_or_default();
    let existing = existing.trim();
    let secret = match existing.parse::<crate::auth::join::JoinToken>() {
        Ok(t) => match t.credential {
            crate::auth::join::Credential::Server(s) => s,
            crate::auth::join::Credential::Bootstrap { .. } => crate::auth::join::random_alnum(32),
        },
        Err(_) if !existing.is_empty() && !existing.starts_with("K10") => existing.to_string(),
        Err(_) => crate::auth::join::random_alnum(32),
    };
    let token = format!("K10{hash}::server:{secret}");
    if token != existing {
        tls::pki::write_private(&path, token.as_bytes()).map_err(|source| ServerError::Pki {
            dir: data_dir.into(),
            source,
        })?;
    }
    Ok(secret)
}

/// The certificates and keys of a server, under `DATA_DIR/tls`.
struct Pki {
    server_ca: Ca,
    client_ca: Ca,
    serving: KeyPairPem,
    admin: KeyPairPem,
    /// The API server's identity towards agents.
    kubelet_client: KeyPairPem,
    /// The scheduler's identity.
    scheduler: KeyPairPem,
    /// This server's identity towards Raft peers.
    peer: KeyPairPem,
    service_account_key: String,
}

/// The names a server's certificate must cover.
fn serving_names(config: &ServerConfig, advertise: &str) -> (Vec<String>, Vec<std::net::IpAddr>) {
    let mut dns = vec![
        "localhost".to_string(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        "kubernetes.default.svc.cluster.local".into(),
        config.node_name.clone(),
    ];
    let mut ips: Vec<std::net::IpAddr> = vec![
        std::net::Ipv4Addr::LOCALHOST.into(),
        crate::network::config().api_service_ip().into(),
    ];
    let host = advertise
        .rsplit_once(':')
        .map(|(h, _)| h.trim_matches(['[', ']']))
        .unwrap_or(advertise);
    let mut add = |name: &str| match name.parse::<std::net::IpAddr>() {
        Ok(ip) if !ip.is_unspecified() => {
            if !ips.contains(&ip) {
                ips.push(ip)
            }
        }
        Ok(_) => {}
        Err(_) if !name.is_empty() && !dns.iter().any(|d| d == name) => dns.push(name.to_string()),
        Err(_) => {}
    };
    add(host);
    if config.listen.ip().is_unspecified() {
        // a wildcard listener is reached on the node's addresses
        if let Some(a) = &config.agent {
            add(&a.advertise_ip);
        }
    } else {
        add(&config.listen.ip().to_string());
    }
    for san in &config.tls_sans {
        add(san);
    }
    (dns, ips)
}

fn load_pki(config: &ServerConfig, advertise: &str) -> Result<Pki, ServerError> {
    let dir = config.data_dir.join("tls");
    let err = |source| ServerError::Pki {
        dir: dir.clone(),
        source,
    };
    let server_ca = Ca::load_or_create(&dir, "server-ca", "wasmkube-server-ca").map_err(err)?;
    let client_ca = Ca::load_or_create(&dir, "client-ca", "wasmkube-client-ca").map_err(err)?;
    let (dns, ips) = serving_names(config, advertise);
    let serving = server_ca
        .ensure_leaf(
            &dir,
            "serving-kube-apiserver",
            &LeafSpec::server("kube-apiserver", dns, ips),
        )
        .map_err(err)?;
    let client = |name: &str, user: &str, groups: &[&str]| {
        client_ca
            .ensure_leaf(&dir, name, &LeafSpec::client(user, groups))
            .map_err(err)
    };
    let admin = client("client-admin", "system:admin", &[crate::auth::MASTERS])?;
    let kubelet_client = client("client-kube-apiserver", crate::auth::APISERVER_USER, &[])?;
    let scheduler = client("client-scheduler", policy::SCHEDULER_USER, &[])?;
    let peer = client(
        "client-wk-server",
        "system:wk-server",
        &[crate::auth::PEERS],
    )?;
    let key_path = dir.join("service.key");
    let service_account_key = match std::fs::read_to_string(&key_path) {
        Ok(k) => k,
        Err(_) => {
            let k = tls::pki::new_signing_key().map_err(err)?;
            tls::pki::write_private(&key_path, k.as_bytes()).map_err(err)?;
            k
        }
    };
    Ok(Pki {
        server_ca,
        client_ca,
        serving,
        admin,
        kubelet_client,
        scheduler,
        peer,
        service_account_key,
    })
}

/// Create `obj` (of resource `plural`) unless it exists.
async fn ensure(store: &Store, plural: &str, obj: Value) -> Result<(), ServerError> {
    let res = resources::lookup(plural).expect("served kind");
    let ns = crate::api::meta::namespace(&obj).to_string();
    let name = crate::api::meta::name(&obj).to_string();
    if store.cache().get(&res.key(&ns, &name)).is_some() {
        return Ok(());
    }
    let ns = (!ns.is_empty()).then_some(ns.as_str());
    match handlers::create(store, res, ns, obj, &Params::default()).await {
        Ok(_) | Err(crate::api::ApiError::AlreadyExists { .. }) => Ok(()),
        Err(source) => Err(ServerError::Bootstrap {
            name: format!("{plural}/{name}"),
            source,
        }),
    }
}

/// Create a default RBAC object, or put back its rules (and subjects)
/// unless an administrator turned `autoupdate` off.
async fn reconcile_default(store: &Store, plural: &str, desired: Value) -> Result<(), ServerError> {
    let res = resources::lookup(plural).expect("served kind");
    let name = crate::api::meta::name(&desired).to_string();
    let Some(current) = store.cache().get(&res.key("", &name)) else {
        return ensure(store, plural, desired).await;
    };
    if current["metadata"]["annotations"][policy::AUTOUPDATE] == "false" {
        return Ok(());
    }
    // aggregated roles get their rules from the aggregation controller
    let fields: &[&str] = if desired.get("aggregationRule").is_some() {
        &["aggregationRule"]
    } else {
        &["rules", "roleRef", "subjects"]
    };
    if fields
        .iter()
        .all(|f| desired.get(*f).is_none() || current.get(*f) == desired.get(*f))
    {
        return Ok(());
    }
    let mut next = (*current).clone();
    for f in fields {
        if let Some(v) = desired.get(*f) {
            next[*f] = v.clone();
        }
    }
    match handlers::update(
        store,
        res,
        "",
        &name,
        next,
        handlers::Part::Main,
        &Params::default(),
    )
    .await
    {
        Ok(_) | Err(crate::api::ApiError::Conflict { .. }) => Ok(()),
        Err(source) => Err(ServerError::Bootstrap {
            name: format!("{plural}/{name}"),
            source,
        }),
    }
}

/// Everything a new cluster starts with: the system namespaces, the
/// default RBAC policy, the controllers' ServiceAccounts, the
/// `kubernetes` and `kube-dns` Services, and the default IngressClass.
async fn bootstrap(store: &Store, advertise: &str) -> Result<(), ServerError> {
    for name in SYSTEM_NAMESPACES {
        ensure(
            store,
            "namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
        )
        .await?;
    }
    for role in policy::cluster_roles() {
        reconcile_default(store, "clusterroles", role).await?;
    }
    for binding in policy::cluster_role_bindings() {
        reconcile_default(store, "clusterrolebindings", binding).await?;
    }
    for (name, _) in policy::controllers() {
        ensure(
            store,
            "serviceaccounts",
            json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": "kube-system"}}),
        )
        .await?;
    }
    let net = crate::network::config();
    // the API servers, for clients in pods (KUBERNETES_SERVICE_HOST)
    let (_, port) = advertise.rsplit_once(':').unwrap_or((advertise, "6443"));
    let port: u16 = port.parse().unwrap_or(6443);
    ensure(
        store,
        "services",
        json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default",
            "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"clusterIP": net.api_service_ip().to_string(),
            "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]}}),
    )
    .await?;
    reconcile_api_endpoints(store, advertise).await?;
    // the cluster DNS: no selector, every agent answers on its address (agent::dns)
    ensure(
        store,
        "services",
        json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system",
            "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}},
        "spec": {"clusterIP": net.dns_service_ip().to_string(), "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}}),
    )
    .await?;
    // our IngressClass, the default class: every agent's gateway serves it
    ensure(
        store,
        "ingressclasses",
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": crate::api::ingress::CLASS,
            "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}},
        "spec": {"controller": crate::api::ingress::CONTROLLER}}),
    )
    .await?;
    Ok(())
}

/// The `default/kubernetes` Endpoints subsets: every server of the
/// cluster (by its Raft address), one subset per port; `own` (this
/// server's subset) when there is only this one.
fn api_endpoints(servers: &std::collections::BTreeMap<u64, String>, own: &Value) -> Value {
    let mut by_port: std::collections::BTreeMap<u16, Vec<String>> = Default::default();
    for addr in servers.values() {
        let Some((host, port)) = addr.rsplit_once(':') else {
            continue;
        };
        let Ok(port) = port.parse::<u16>() else {
            continue;
        };
        by_port
            .entry(port)
            .or_default()
            .push(host.trim_matches(['[', ']']).to_string());
    }
    if servers.len() <= 1 || by_port.is_empty() {
        return own.clone();
    }
    Value::Array(
        by_port
            .into_iter()
            .map(|(port, hosts)| {
                json!({"addresses": hosts.iter().map(|h| json!({"ip": h})).collect::<Vec<_>>(),
                    "ports": [{"name": "https", "port": port, "protocol": "TCP"}]})
            })
            .collect(),
    )
}

/// The `default/kubernetes` Endpoints: the API servers (all of the
/// cluster's, from its Raft membership), which agents fail over between.
async fn reconcile_api_endpoints(store: &Store, advertise: &str) -> Result<(), ServerError> {
    let (host, port) = advertise.rsplit_once(':').unwrap_or((advertise, "6443"));
    let port: u16 = port.parse().unwrap_or(6443);
    let endpoints = json!({"apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default",
            "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": host.trim_matches(['[', ']'])}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]});
    let ep = resources::lookup("endpoints").expect("endpoints are served");
    let desired = api_endpoints(&store.addresses(), &endpoints["subsets"]);
    match store.cache().get(&ep.key("default", "kubernetes")) {
        Some(cur) if cur.get("subsets") == Some(&desired) => {}
        Some(cur) => {
            let mut next = (*cur).clone();
            next["subsets"] = desired;
            let _ = handlers::update(
                store,
                ep,
                "default",
                "kubernetes",
                next,
                handlers::Part::Main,
                &Params::default(),
            )
            .await;
        }
        None => ensure(store, "endpoints", endpoints).await?,
    }
    Ok(())
}

/// A bearer token source for ServiceAccount `kube-system/NAME`, minted
/// in-process (24 hours, renewed an hour before it ends).
fn service_account_credentials(security: Arc<Security>, store: Store, name: String) -> Credentials {
    let current: std::sync::Mutex<Option<(String, i64)>> = std::sync::Mutex::default();
    Credentials::Source(Arc::new(move || {
        let now = chrono::Utc::now().timestamp();
        let mut cur = current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((t, exp)) = cur.as_ref() {
            if exp - now > 3600 {
                return t.clone();
            }
        }
        let sas = resources::lookup("serviceaccounts").expect("served");
        let Some(sa) = store.cache().get(&sas.key("kube-system", &name)) else {
            tracing::warn!(account = %name, "controller service account is missing");
            return String::new();
        };
        let uid = sa["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let claims = security.signer.claims(
            "kube-system",
            token::Ref {
                name: name.clone(),
                uid,
            },
            vec![],
            24 * 3600,
            None,
            None,
        );
        match security.signer.sign(&claims) {
            Ok(t) => {
                *cur = Some((t.clone(), claims.exp));
                t
            }
            Err(e) => {
                tracing::warn!(error = %e, "signing a controller token");
                String::new()
            }
        }
    }))
}

/// The embedded agent's identity: issued in-process, as a join would.
async fn embedded_agent_identity(
    security: &Security,
    store: &Store,
    agent: &crate::agent::AgentConfig,
) -> Result<crate::agent::identity::NodeIdentity, ServerError> {
    use crate::agent::identity;
    if let Some(id) = identity::NodeIdentity::load(&agent.data_dir, &agent.node_name) {
        if id.server_ca == security.server_ca.cert_pem {
            return Ok(id);
        }
    }
    let pki = |source| ServerError::Pki {
        dir: agent.data_dir.clone(),
        source,
    };
    let password = identity::node_password(&agent.data_dir).map_err(pki)?;
    let (req, client_key, serving_key) = identity::request(
        &agent.node_name,
        &password,
        std::slice::from_ref(&agent.advertise_ip),
    )
    .map_err(pki)?;
    let resp = apiserver::join::issue_node(security, store, &req, true)
        .await
        .map_err(ServerError::Join)?;
    let id = identity::from_response(resp, client_key, serving_key);
    id.save(&agent.data_dir).map_err(pki)?;
    Ok(id)
}

/// This server's Raft id, kept in `DATA_DIR/raft/node-id`: 1 for the
/// server that starts a cluster, a random one for a server joining (so a
/// wiped server rejoins under a new id).
fn node_id(dir: &Path, joining: bool) -> Result<crate::store::NodeId, ServerError> {
    let raft = dir.join("raft");
    let path = raft.join("node-id");
    let io = |source| ServerError::DataDir {
        path: path.clone(),
        source,
    };
    if let Ok(text) = std::fs::read_to_string(&path) {
        return text.trim().parse().map_err(|e| {
            io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not a node id: {e}"),
            ))
        });
    }
    // a store made before ids were kept is server 1's
    let id = if joining
        && !raft.join(crate::store::LOG_DIR).exists()
        && !raft.join(crate::store::OLD_LOG_FILE).exists()
    {
        use rand::Rng;
        rand::rng().random_range(2..(1u64 << 53))
    } else {
        1
    };
    std::fs::create_dir_all(&raft).map_err(io)?;
    std::fs::write(&path, format!("{id}\n")).map_err(io)?;
    Ok(id)
}

/// Fetch the cluster's keys from a server of it (see
/// `apiserver::cluster::bundle`), after checking its CA against the token.
async fn fetch_bundle(dir: &Path, join: &JoinSpec) -> Result<(), ServerError> {
    use crate::auth::join::{Credential, JoinToken};
    let fail = |detail: String| ServerError::JoinCluster {
        url: join.url.clone(),
        detail,
    };
    let token: JoinToken = join
        .token
        .parse()
        .map_err(|e: crate::auth::join::TokenFormatError| fail(e.to_string()))?;
    let Credential::Server(secret) = &token.credential else {
        return Err(fail(
            "a server joins with the server token (DATA_DIR/token of a server), not a bootstrap token"
                .into(),
        ));
    };
    let base = join.url.trim_end_matches('/');
    let insecure = tls::insecure_http_client().map_err(|e| fail(e.to_string()))?;
    let ca = insecure
        .get(format!("{base}/cacerts"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| fail(e.to_string()))?
        .text()
        .await
        .map_err(|e| fail(e.to_string()))?;
    let actual = tls::pki::sha256_hex(ca.as_bytes());
    if actual != token.ca_hash {
        return Err(fail(format!(
            "the server's CA does not match the hash in the token (token says {}, the server has {actual}): refusing to send the token",
            token.ca_hash
        )));
    }
    let http = tls::http_client(&ca, None).map_err(|e| fail(e.to_string()))?;
    let resp = http
        .post(format!("{base}/v1-wk/join-server"))
        .bearer_auth(format!("server:{secret}"))
        .send()
        .await
        .map_err(|e| fail(e.to_string()))?;
    if !resp.status().is_success() {
        let code = resp.status();
        let body: Value = resp.json().await.unwrap_or_default();
        return Err(fail(format!(
            "{code}: {}",
            body["message"].as_str().unwrap_or("refused")
        )));
    }
    let bundle: apiserver::cluster::Bundle = resp.json().await.map_err(|e| fail(e.to_string()))?;
    for f in apiserver::cluster::BUNDLE_FILES {
        let text = bundle
            .files
            .get(f)
            .ok_or_else(|| fail(format!("the answer lacks {f}")))?;
        let path = dir.join(f);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| ServerError::DataDir {
                path: parent.into(),
                source,
            })?;
        }
        tls::pki::write_private(&path, text.as_bytes()).map_err(|source| ServerError::Pki {
            dir: dir.into(),
            source,
        })?;
    }
    Ok(())
}

/// Ask the cluster (through any server) to add this one, until it is a
/// member: learner, caught up, voter.
async fn join_cluster(
    store: &Store,
    peer: &reqwest::Client,
    join: &JoinSpec,
    advertise: &str,
) -> Result<(), ServerError> {
    let req = crate::store::cluster::JoinRequest {
        node_id: store.node_id(),
        address: advertise.to_string(),
    };
    let url = format!("{}/raft/join", join.url.trim_end_matches('/'));
    let mut backoff = Duration::from_millis(500);
    loop {
        let sent = peer
            .post(&url)
            .timeout(Duration::from_secs(300))
            .json(&req)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => break,
            Ok(r) if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                tracing::warn!(%url, retry_in = ?backoff, "the cluster has no leader yet");
            }
            Ok(r) => {
                let code = r.status();
                let body: Value = r.json().await.unwrap_or_default();
                return Err(ServerError::JoinCluster {
                    url,
                    detail: format!("{code}: {}", body["message"].as_str().unwrap_or("refused")),
                });
            }
            Err(e) => {
                tracing::warn!(%url, error = %e, retry_in = ?backoff, "cannot reach the cluster")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
    store
        .raft()
        .wait(Some(Duration::from_secs(120)))
        .metrics(
            |m| {
                m.current_leader.is_some()
                    && m.membership_config
                        .membership()
                        .voter_ids()
                        .any(|v| v == req.node_id)
            },
            "this server is a voter",
        )
        .await
        .map_err(|e| ServerError::JoinCluster {
            url: url.clone(),
            detail: e.to_string(),
        })?;
    store.linearize().await?;
    tracing::info!(id = req.node_id, "joined the cluster as a voter");
    Ok(())
}

/// Run `task` while this server leads the Raft cluster, stopping it when
/// leadership moves (the scheduler and controllers run on one server at a
/// time, as kube-controller-manager's leader election has them).
async fn while_leader<F, Fut>(store: Store, mut stop: crate::controllers::CancelToken, task: F)
where
    F: Fn(crate::controllers::CancelToken) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut metrics = store.raft().metrics();
    let me = store.node_id();
    loop {
        tokio::select! {
            r = metrics.wait_for(|m| m.current_leader == Some(me)) => if r.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
        tracing::info!(id = me, "leading: the scheduler and controllers run here");
        let (tx, rx) = tokio::sync::watch::channel(false);
        let running = tokio::spawn(task(rx));
        tokio::select! {
            _ = metrics.wait_for(|m| m.current_leader != Some(me)) => {
                tracing::info!(id = me, "no longer leading: the scheduler and controllers stop here");
            }
            _ = stop.wait_for(|s| *s) => {}
        }
        let _ = tx.send(true);
        let _ = running.await;
        if *stop.borrow() {
            return;
        }
    }
}

/// Run the server until `shutdown` resolves, then stop cleanly: in-flight
/// requests finish, and every acknowledged write is already on disk.
pub async fn run(
    config: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    tls::install_default_provider();
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).map_err(|source| ServerError::DataDir {
        path: dir.clone(),
        source,
    })?;
    let listener =
        TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServerError::Listen {
                addr: config.listen,
                source,
            })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            addr: config.listen,
            source,
        })?;
    // a wildcard listener is advertised on loopback unless told otherwise
    // (its certificate covers 127.0.0.1, never 0.0.0.0)
    let advertise = config.advertise.clone().unwrap_or_else(|| {
        if bound.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], bound.port())).to_string()
        } else {
            bound.to_string()
        }
    });
    let id = node_id(dir, config.join.is_some())?;
    let fresh = !dir.join("tls").join("server-ca.crt").exists();
    if let (Some(join), true) = (&config.join, fresh) {
        fetch_bundle(dir, join).await?;
    }
    let pki = load_pki(&config, &advertise)?;
    let join_secret = join_token(dir, &pki.server_ca)?;
    let keyring = Arc::new(crate::store::encryption::Keyring::load_or_create(
        &encryption_config_path(dir),
    )?);

    let local = Some(bound.ip()).filter(|ip| !ip.is_unspecified());
    let peer_http = tls::peer_http_client(&pki.server_ca.cert_pem, &pki.peer, local)?;
    let store = Store::open(
        &dir.join("raft"),
        &StoreConfig {
            node_id: id,
            advertise: advertise.clone(),
            history: config.watch_history,
            history_age: config.watch_history_age,
            peer_http: peer_http.clone(),
            snapshot_logs: config.snapshot_logs,
            keyring,
            bootstrap: config.join.is_none(),
            timing: config.raft_timing,
        },
    )
    .await?;
    // a server that is not a member yet serves (its peers must reach its
    // Raft endpoints) before it asks to join
    let joining = !store.is_member();
    if !joining {
        bootstrap(&store, &advertise).await?;
    }

    let security = Arc::new(Security::new(
        token::Signer::from_pem(&pki.service_account_key, token::DEFAULT_ISSUER)?,
        pki.server_ca,
        pki.client_ca,
        join_secret,
    ));
    let audit = match &config.audit {
        Some(a) => Some(
            apiserver::audit::AuditLog::open(a.clone()).map_err(|source| ServerError::Audit {
                path: a.path.clone(),
                source,
            })?,
        ),
        None => None,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let graph = apiserver::graph::NodeGraph::new();
    tokio::spawn(graph.clone().follow(store.cache().clone(), stop_rx.clone()));
    apiserver::customresources::sync(store.cache());
    tokio::spawn(apiserver::customresources::follow(
        store.cache().clone(),
        stop_rx.clone(),
    ));
    let state = Arc::new(ApiState {
        store: store.clone(),
        security: security.clone(),
        audit,
        graph,
        bookmark_interval: config.bookmark_interval,
        advertise: advertise.clone(),
        shutdown: stop_rx.clone(),
        kubelet: tls::http1_client(&security.server_ca.cert_pem, Some(&pki.kubelet_client))?,
        stream_failures: Default::default(),
        data_dir: dir.clone(),
    });
    let app = apiserver::router(state);
    let tls_config = tls::server_config(
        &pki.serving,
        &security.client_ca.cert_pem,
        tls::ClientAuth::Optional,
        tls::Alpn::H2AndHttp11,
    )?;

    let server_url = format!("https://{advertise}");
    let ca = security.server_ca.cert_pem.clone();
    let kubeconfig = kubeconfig_path(dir);
    Kubeconfig {
        server: server_url.clone(),
        ca: Some(ca.clone()),
        client_cert: Some(pki.admin.clone()),
        ..Default::default()
    }
    .write(&kubeconfig)?;

    let mut serving = None;
    let mut listener = Some(listener);
    if joining {
        let join = config.join.as_ref().ok_or_else(|| {
            ServerError::Store(StoreError::Raft(
                "this store belongs to no cluster and no --join was given".into(),
            ))
        })?;
        serving = Some(tokio::spawn(tls::serve::serve(
            listener.take().expect("not served yet"),
            tls_config.clone(),
            app.clone(),
            stop_rx.clone(),
        )));
        join_cluster(&store, &peer_http, join, &advertise).await?;
        bootstrap(&store, &advertise).await?;
    }
    let agent = match config.agent.clone() {
        Some(mut agent_config) => {
            let identity = embedded_agent_identity(&security, &store, &agent_config).await?;
            agent_config.cluster_ca = identity.server_ca.clone();
            let client = Client::new(
                server_url.clone(),
                &ca,
                Some(&identity.client),
                Credentials::None,
            )?;
            let agent = crate::agent::Agent::new(agent_config, client.with_name("wk-agent"))?;
            let listen = SocketAddr::from(([127, 0, 0, 1], 0));
            let stop = stop_rx.clone();
            Some(tokio::spawn(async move {
                agent.run(listen, &identity, stop).await
            }))
        }
        None => None,
    };
    let scheduler = Client::new(
        server_url.clone(),
        &ca,
        Some(&pki.scheduler),
        Credentials::None,
    )?;
    let base = Client::new(server_url.clone(), &ca, None, Credentials::None)?;
    let (sec, st) = (security.clone(), store.clone());
    let client_for: crate::controllers::ClientFor = Arc::new(move |name: &str| {
        if name == "scheduler" {
            return scheduler.with_name("wk-scheduler");
        }
        base.with_credentials(service_account_credentials(
            sec.clone(),
            st.clone(),
            name.to_string(),
        ))
        .with_name(name)
    });
    let controller_config = crate::controllers::Config {
        root_ca: ca.clone(),
        ..config.controllers.clone()
    };
    let controllers = tokio::spawn(while_leader(store.clone(), stop_rx.clone(), move |stop| {
        crate::controllers::run(client_for.clone(), controller_config.clone(), stop)
    }));
    let membership = tokio::spawn(watch_membership(
        store.clone(),
        advertise.clone(),
        stop_rx.clone(),
    ));

    tracing::info!(listen = %bound, node = %config.node_name, id, kubeconfig = %kubeconfig.display(), "wk server ready");
    // a joiner has served since before it joined
    if let Some(l) = listener {
        serving = Some(tokio::spawn(tls::serve::serve(l, tls_config, app, stop_rx)));
    }
    let mut stopped = None;
    let removed = tokio::select! {
        _ = shutdown => false,
        r = membership => r.unwrap_or(false),
        e = store.stopped() => {
            tracing::error!(error = %e, "the store stopped: exiting");
            stopped = Some(e);
            false
        }
    };
    let _ = stop_tx.send(true);
    if let Some(e) = stopped {
        // nothing can be written any more and requests in flight may wait
        // on the store for ever: exit now, without a graceful drain
        return Err(ServerError::StoreStopped(e));
    }
    if let Some(s) = serving {
        let _ = s.await;
    }
    let _ = controllers.await;
    if let Some(a) = agent {
        let _ = a.await;
    }
    store.shutdown().await;
    tracing::info!("wk server stopped");
    if removed {
        return Err(ServerError::Removed(id));
    }
    Ok(())
}

/// On the leader, finish interrupted membership changes and promote
/// caught-up learners; on every server, notice its own removal. Returns
/// true once this server was removed, false on shutdown.
async fn watch_membership(
    store: Store,
    advertise: String,
    mut stop: crate::controllers::CancelToken,
) -> bool {
    let mut was_member = store.is_member();
    let mut addresses = store.addresses();
    let mut removed = store.removed();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stop.wait_for(|s| *s) => return false,
            _ = removed.wait_for(|r| *r) => {
                tracing::error!(id = store.node_id(), "this server was removed from the cluster: stopping");
                return true;
            }
        }
        if let Err(e) = store.reconcile_membership().await {
            tracing::warn!(error = %e, "membership reconcile");
        }
        let now = store.addresses();
        if now != addresses && store.is_leader() {
            match reconcile_api_endpoints(&store, &advertise).await {
                Ok(()) => addresses = now,
                Err(e) => tracing::warn!(error = %e, "updating the API servers' Endpoints"),
            }
        }
        let member = store.is_member();
        if was_member && !member {
            tracing::error!(
                id = store.node_id(),
                "this server was removed from the cluster: stopping"
            );
            return true;
        }
        was_member |= member;
    }
}

#[cfg(test)]
mod tests {
    use super::api_endpoints;
    use serde_json::json;
    use std::collections::BTreeMap;

    #[test]
    fn the_api_endpoints_list_every_server_by_port() {
        let own = json!([{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]}]);
        // one server: its own subset, as written at start
        let one = BTreeMap::from([(1, "10.0.0.1:6443".to_string())]);
        assert_eq!(api_endpoints(&one, &own), own);
        // three servers, two ports: one subset per port
        let three = BTreeMap::from([
            (1, "10.0.0.1:6443".to_string()),
            (7, "10.0.0.2:6443".to_string()),
            (9, "[fd00::3]:7443".to_string()),
        ]);
        assert_eq!(
            api_endpoints(&three, &own),
            json!([
                {"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}],
                 "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]},
                {"addresses": [{"ip": "fd00::3"}],
                 "ports": [{"name": "https", "port": 7443, "protocol": "TCP"}]}
            ])
        );
    }
}
