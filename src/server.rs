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

/// Namespaces that cannot be deleted, as in Kubernetes.
pub const UNDELETABLE_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

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
    pub bookmark_interval: Duration,
    /// Raft log entries between snapshots.
    pub snapshot_logs: u64,
    /// The embedded node agent (`None`: `--disable-agent`).
    pub agent: Option<crate::agent::AgentConfig>,
    /// The scheduler and controllers.
    pub controllers: crate::controllers::Config,
    /// Extra names and addresses for the serving certificate (`--tls-san`).
    pub tls_sans: Vec<String>,
    /// Where audit events go (`--audit-log-path`), if anywhere.
    pub audit: Option<apiserver::audit::AuditConfig>,
}

/// The default data directory: `$WK_DATA_DIR`, else `/var/lib/wasmkube` for
/// root, else `~/.local/share/wasmkube`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("WK_DATA_DIR") {
        return PathBuf::from(d);
    }
    let is_root = std::fs::metadata("/proc/self").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid() == 0
    });
    if is_root.unwrap_or(false) {
        return PathBuf::from("/var/lib/wasmkube");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/wasmkube")
}

/// Where a server keeps the keys Secrets are encrypted with.
pub fn encryption_config_path(data_dir: &Path) -> PathBuf {
    data_dir.join("cred").join("encryption-config.json")
}

/// The kubeconfig a server writes into its data directory.
pub fn kubeconfig_path(data_dir: &Path) -> PathBuf {
    data_dir.join("kubeconfig.yaml")
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
    let (host, port) = advertise.rsplit_once(':').unwrap_or((advertise, "6443"));
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
    let endpoints = json!({"apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default",
            "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": host.trim_matches(['[', ']'])}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]});
    let ep = resources::lookup("endpoints").expect("endpoints are served");
    match store.cache().get(&ep.key("default", "kubernetes")) {
        Some(cur) if cur.get("subsets") == endpoints.get("subsets") => {}
        Some(cur) => {
            let mut next = (*cur).clone();
            next["subsets"] = endpoints["subsets"].clone();
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
        "metadata": {"name": crate::agent::ingress::CLASS,
            "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}},
        "spec": {"controller": crate::agent::ingress::CONTROLLER}}),
    )
    .await?;
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
    let pki = load_pki(&config, &advertise)?;
    let join_secret = join_token(dir, &pki.server_ca)?;
    let keyring = Arc::new(crate::store::encryption::Keyring::load_or_create(
        &encryption_config_path(dir),
    )?);

    let store = Store::open(
        &dir.join("raft"),
        &StoreConfig {
            node_id: 1,
            advertise: advertise.clone(),
            history: config.watch_history,
            peer_http: tls::http_client(&pki.server_ca.cert_pem, Some(&pki.peer))?,
            snapshot_logs: config.snapshot_logs,
            keyring,
        },
    )
    .await?;
    bootstrap(&store, &advertise).await?;

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
    let controllers = tokio::spawn(crate::controllers::run(
        client_for,
        crate::controllers::Config {
            root_ca: ca.clone(),
            ..config.controllers.clone()
        },
        stop_rx.clone(),
    ));

    tracing::info!(listen = %bound, node = %config.node_name, kubeconfig = %kubeconfig.display(), "wk server ready");
    let serving = tokio::spawn(tls::serve::serve(listener, tls_config, app, stop_rx));
    shutdown.await;
    let _ = stop_tx.send(true);
    let _ = serving.await;
    let _ = controllers.await;
    if let Some(a) = agent {
        let _ = a.await;
    }
    store.shutdown().await;
    tracing::info!("wk server stopped");
    Ok(())
}
