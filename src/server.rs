//! `wk server`: the control plane in one process: store, API server and
//! controllers, on one data directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::net::TcpListener;

use crate::api::resources;
use crate::apiserver::{self, handlers, request::Params, ApiState};
use crate::client::{Client, Kubeconfig};
use crate::store::{Store, StoreConfig, StoreError};

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
    #[error("creating namespace {name}: {source}")]
    Bootstrap {
        name: String,
        #[source]
        source: crate::api::ApiError,
    },
    #[error(transparent)]
    Kubeconfig(#[from] crate::client::kubeconfig::KubeconfigError),
    #[error(transparent)]
    Agent(#[from] crate::agent::AgentError),
    #[error("serving HTTP: {0}")]
    Serve(#[source] std::io::Error),
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

/// The kubeconfig a server writes into its data directory.
pub fn kubeconfig_path(data_dir: &Path) -> PathBuf {
    data_dir.join("kubeconfig.yaml")
}

/// Read the admin token, creating a random one on first start.
fn admin_token(data_dir: &Path) -> Result<String, ServerError> {
    let path = data_dir.join("token");
    let io = |source| ServerError::DataDir {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        _ => {
            use rand::Rng;
            let bytes: [u8; 24] = rand::rng().random();
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, &token).map_err(io)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
                    .map_err(io)?;
            }
            std::fs::rename(&tmp, &path).map_err(io)?;
            Ok(token)
        }
    }
}

async fn ensure_namespaces(store: &Store) -> Result<(), ServerError> {
    let res = resources::lookup("namespaces").expect("namespaces are served");
    for name in SYSTEM_NAMESPACES {
        if store.cache().get(&res.key("", name)).is_some() {
            continue;
        }
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        match handlers::create(store, res, None, ns, &Params::default()).await {
            Ok(_) | Err(crate::api::ApiError::AlreadyExists { .. }) => {}
            Err(source) => {
                return Err(ServerError::Bootstrap {
                    name: name.to_string(),
                    source,
                })
            }
        }
    }
    Ok(())
}

/// The cluster DNS Service, `kube-system/kube-dns`, on the tenth address of
/// the Service range. It has no selector: every agent answers on its
/// address itself (see `agent::dns`).
async fn ensure_dns_service(store: &Store) -> Result<(), ServerError> {
    let res = resources::lookup("services").expect("services are served");
    if store
        .cache()
        .get(&res.key("kube-system", "kube-dns"))
        .is_some()
    {
        return Ok(());
    }
    let ip = crate::network::config().dns_service_ip().to_string();
    let svc = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system",
            "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}},
        "spec": {"clusterIP": ip, "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}});
    match handlers::create(store, res, Some("kube-system"), svc, &Params::default()).await {
        Ok(_) | Err(crate::api::ApiError::AlreadyExists { .. }) => Ok(()),
        Err(source) => Err(ServerError::Bootstrap {
            name: "kube-system/kube-dns".into(),
            source,
        }),
    }
}

/// Our IngressClass, the default class: every agent's gateway serves it.
async fn ensure_ingress_class(store: &Store) -> Result<(), ServerError> {
    let res = resources::lookup("ingressclasses").expect("ingressclasses are served");
    if store
        .cache()
        .get(&res.key("", crate::agent::ingress::CLASS))
        .is_some()
    {
        return Ok(());
    }
    let class = json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": crate::agent::ingress::CLASS,
            "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}},
        "spec": {"controller": crate::agent::ingress::CONTROLLER}});
    match handlers::create(store, res, None, class, &Params::default()).await {
        Ok(_) | Err(crate::api::ApiError::AlreadyExists { .. }) => Ok(()),
        Err(source) => Err(ServerError::Bootstrap {
            name: format!("ingressclass/{}", crate::agent::ingress::CLASS),
            source,
        }),
    }
}

/// Run the server until `shutdown` resolves, then stop cleanly: in-flight
/// requests finish, and every acknowledged write is already on disk.
pub async fn run(
    config: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).map_err(|source| ServerError::DataDir {
        path: dir.clone(),
        source,
    })?;
    let token = admin_token(dir)?;
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
    let advertise = config
        .advertise
        .clone()
        .unwrap_or_else(|| bound.to_string());

    let store = Store::open(
        &dir.join("raft"),
        &StoreConfig {
            node_id: 1,
            advertise: advertise.clone(),
            history: config.watch_history,
            peer_token: token.clone(),
            snapshot_logs: config.snapshot_logs,
        },
    )
    .await?;
    ensure_namespaces(&store).await?;
    ensure_dns_service(&store).await?;
    ensure_ingress_class(&store).await?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let state = Arc::new(ApiState {
        store: store.clone(),
        token: token.clone(),
        bookmark_interval: config.bookmark_interval,
        advertise: advertise.clone(),
        shutdown: stop_rx.clone(),
        http: reqwest::Client::new(),
    });
    let app = apiserver::router(state);

    let server_url = format!("http://{advertise}");
    let kubeconfig = kubeconfig_path(dir);
    Kubeconfig {
        server: server_url.clone(),
        token: token.clone(),
        namespace: None,
    }
    .write(&kubeconfig)?;

    let client = Client::new(server_url.clone(), token.clone());
    let agent = match config.agent.clone() {
        Some(agent_config) => {
            let agent = crate::agent::Agent::new(agent_config, client.clone())?;
            let listen = SocketAddr::from(([127, 0, 0, 1], 0));
            Some(tokio::spawn(agent.run(
                listen,
                token.clone(),
                stop_rx.clone(),
            )))
        }
        None => None,
    };
    let controllers = tokio::spawn(crate::controllers::run(
        client,
        config.controllers.clone(),
        stop_rx,
    ));

    tracing::info!(listen = %bound, node = %config.node_name, kubeconfig = %kubeconfig.display(), "wk server ready");
    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let result = serve.await.map_err(ServerError::Serve);
    let _ = controllers.await;
    if let Some(a) = agent {
        let _ = a.await;
    }
    store.shutdown().await;
    tracing::info!("wk server stopped");
    result
}
