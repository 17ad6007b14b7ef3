//! The node agent (kubelet): registers its Node, heartbeats, runs the pods
//! bound to it (`spec.nodeName`) and reports their status, all through the
//! public API. `wk server` embeds one; `wk agent` runs one on another machine.
//!
//! - [`node`]: Node registration, Ready condition, Lease heartbeats.
//! - [`pod`]: one worker per pod (init containers, restart policy, back-off,
//!   probes, status, deletion).
//! - [`probe`]: startup, liveness and readiness probes.
//! - [`exec`]: exec sessions over the WebSocket channel protocol.
//! - [`spec`]: pod container → runtime container spec (pure).
//! - [`status`]: runtime state → pod status (pure).

pub mod dns;
pub mod exec;
pub mod functions;
pub mod identity;
pub mod ingress;
pub mod metrics;
pub mod node;
pub mod pod;
pub mod probe;
pub mod sandbox;
pub mod server;
pub mod services;
pub mod spec;
pub mod status;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use wasmkube_runtime::oci::{OciConfig, OciRuntime};
use wasmkube_runtime::wasm::{WasmConfig, WasmRuntime};
use wasmkube_runtime::ContainerRuntime;

use crate::api::meta;
use crate::api::resources;
use crate::client::events::Recorder;
use crate::client::runtime::{self, Cache, Change};
use crate::client::Client;
use crate::controllers::CancelToken;
use crate::network::Cidr;

/// Errors starting an agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("starting the Wasm runtime: {0}")]
    Runtime(#[from] wasmkube_runtime::RuntimeError),
    #[error("agent listener: {0}")]
    Listen(#[source] std::io::Error),
    #[error("agent TLS: {0}")]
    Tls(String),
    #[error("node identity: {0}")]
    Identity(#[from] identity::IdentityError),
}

/// Where the agent keeps its node's pod range.
const POD_CIDR_FILE: &str = "pod-cidr";

/// Raise this process's soft limit on open files to its hard limit, as
/// container runtimes do at start: every running Wasm pod holds a few
/// descriptors (its log, its preopened directories), and the usual soft
/// limit of 1024 would stop a node at a few hundred pods. Returns the limit
/// now in force.
pub fn raise_open_file_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit with a valid pointer to a local rlimit
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(lim.rlim_cur)
}

/// The `wk` subcommand that runs a container's shim.
pub const SHIM_SUBCOMMAND: &str = "__oci-shim";

/// Image tarballs in this directory (under the agent's data directory) are
/// imported when the agent starts, as k3s imports `agent/images`.
pub const IMPORT_DIR: &str = "import";

/// The Linux image store of an agent's data directory.
pub fn oci_image_store(data_dir: &std::path::Path) -> wasmkube_runtime::oci::images::ImageStore {
    wasmkube_runtime::oci::images::ImageStore::new(data_dir.join("oci").join("images"), Vec::new())
}

/// How an agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_name: String,
    /// Pod files, logs, volumes and the compile cache.
    pub data_dir: PathBuf,
    /// The node's address (Node InternalIP, pods' hostIP).
    pub advertise_ip: String,
    /// Pods this node accepts (Node capacity).
    pub max_pods: u32,
    /// CPU and memory offered to pods (quantities; default: the machine's).
    pub cpu: Option<String>,
    pub memory: Option<String>,
    /// Node status and Lease renewal interval.
    pub heartbeat: Duration,
    /// First restart back-off (doubles up to `backoff_max`).
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Where the Ingress gateway listens (plain HTTP, and TLS); None: off.
    pub ingress_listen: Option<std::net::SocketAddr>,
    pub ingress_tls_listen: Option<std::net::SocketAddr>,
    /// The cluster's server CA (PEM): guests' outbound HTTPS trusts it, so
    /// they can call the API server the in-cluster way.
    pub cluster_ca: String,
    /// Image garbage collection starts when the image filesystem is this
    /// full (percent) and stops at the low mark, as the kubelet's
    /// `--image-gc-high-threshold` and `--image-gc-low-threshold`.
    pub image_gc_high: u8,
    pub image_gc_low: u8,
    /// Start new Wasm modules on Winch code while Cranelift compiles them.
    pub wasm_baseline_compiler: bool,
}

impl AgentConfig {
    /// Kubernetes' defaults: 10 s heartbeats, back-off 10 s doubling to 5 min.
    pub fn new(node_name: String, data_dir: PathBuf) -> Self {
        Self {
            node_name,
            data_dir,
            advertise_ip: "127.0.0.1".into(),
            max_pods: 1000,
            cpu: None,
            memory: None,
            heartbeat: Duration::from_secs(10),
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            ingress_listen: None,
            ingress_tls_listen: None,
            cluster_ca: String::new(),
            image_gc_high: wasmkube_runtime::oci::gc::DEFAULT_HIGH_PERCENT,
            image_gc_low: wasmkube_runtime::oci::gc::DEFAULT_LOW_PERCENT,
            wasm_baseline_compiler: true,
        }
    }
}

/// A running agent's shared state.
pub struct Agent {
    pub config: AgentConfig,
    pub client: Client,
    pub recorder: Recorder,
    pub runtimes: Vec<Arc<dyn ContainerRuntime>>,
    /// Linux containers through runc, when runc is on this machine.
    pub oci: Option<OciRuntime>,
    /// For HTTP probes.
    pub http: reqwest::Client,
    /// Sampled resource and request metrics of the containers.
    pub metrics: metrics::Metrics,
    /// The HTTP functions this node serves, by address.
    pub functions: Arc<functions::Functions>,
    /// The Service proxy and the Service cache behind the pods' environment.
    pub proxy: Arc<services::ServiceProxy>,
    /// The node's pod address range (`spec.podCIDR`), once known.
    pod_cidr: watch::Sender<Option<Cidr>>,
    /// Pod addresses in use.
    ips: Mutex<std::collections::BTreeSet<u32>>,
    workers: Mutex<HashMap<String, watch::Sender<Option<Arc<Value>>>>>,
    /// Running pod workers by `namespace/name`, for logs.
    pods: Mutex<HashMap<String, Arc<pod::PodCtx>>>,
    /// Pods resumed from local state whose workers have not registered
    /// yet (`namespace/name`): exec and attach wait for them.
    resuming: Mutex<std::collections::HashSet<String>>,
}

impl Agent {
    /// Set up the runtimes; nothing runs until [`Agent::run`].
    pub fn new(config: AgentConfig, client: Client) -> Result<Arc<Self>, AgentError> {
        crate::tls::install_default_provider();
        let wasm = WasmRuntime::new(WasmConfig {
            cache_dir: config.data_dir.join("cache"),
            image_dir: config.data_dir.join("images"),
            pooling_instances: Some(config.max_pods),
            extra_roots: crate::tls::pki::certs_from_pem(&config.cluster_ca)
                .unwrap_or_default()
                .into_iter()
                .map(|c| c.to_vec())
                .collect(),
            baseline_compiler: config.wasm_baseline_compiler,
        })?;
        let recorder = Recorder::new(client.clone(), format!("agent/{}", config.node_name));
        let proxy = services::ServiceProxy::new(
            config
                .advertise_ip
                .parse()
                .unwrap_or(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST)),
        );
        let saved_cidr = std::fs::read_to_string(config.data_dir.join(POD_CIDR_FILE))
            .ok()
            .and_then(|s| crate::controllers::nodeipam::parse_cidr(s.trim()));
        let extra_roots: Vec<Vec<u8>> = crate::tls::pki::certs_from_pem(&config.cluster_ca)
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.to_vec())
            .collect();
        let runc =
            std::path::PathBuf::from(std::env::var_os("WK_RUNC").unwrap_or_else(|| "runc".into()));
        let oci = match std::env::current_exe() {
            Ok(exe) if OciRuntime::available(&runc) => Some(OciRuntime::new(OciConfig {
                root: config.data_dir.join("oci"),
                runc,
                shim: vec![exe.into_os_string(), SHIM_SUBCOMMAND.into()],
                extra_roots,
            })?),
            _ => {
                tracing::warn!("runc is not on this machine: only Wasm containers run here");
                None
            }
        };
        let mut runtimes: Vec<Arc<dyn ContainerRuntime>> = vec![Arc::new(wasm)];
        if let Some(oci) = &oci {
            runtimes.push(Arc::new(oci.clone()));
        }
        Ok(Arc::new(Self {
            config,
            client,
            recorder,
            runtimes,
            oci,
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .unwrap_or_default(),
            functions: Arc::default(),
            metrics: metrics::Metrics::default(),
            proxy,
            pod_cidr: watch::Sender::new(saved_cidr),
            ips: Mutex::default(),
            workers: Mutex::default(),
            pods: Mutex::default(),
            resuming: Mutex::default(),
        }))
    }

    /// Learn the node's pod range (kept on disk for restarts without a
    /// control plane).
    pub fn set_pod_cidr(&self, cidr: Cidr) {
        if *self.pod_cidr.borrow() == Some(cidr) {
            return;
        }
        let _ = std::fs::create_dir_all(&self.config.data_dir);
        let _ = std::fs::write(
            self.config.data_dir.join(POD_CIDR_FILE),
            format!("{cidr}\n"),
        );
        tracing::info!(%cidr, "pod address range");
        self.pod_cidr.send_replace(Some(cidr));
    }

    /// The node's pod range, waiting until the control plane has given one.
    pub async fn pod_cidr(&self) -> Cidr {
        let mut rx = self.pod_cidr.subscribe();
        loop {
            if let Some(c) = *rx.borrow_and_update() {
                return c;
            }
            if rx.changed().await.is_err() {
                return crate::network::config().cluster_cidr;
            }
        }
    }

    /// A free pod address of the node's range (the first two are not used).
    pub async fn allocate_ip(&self) -> String {
        let cidr = self.pod_cidr().await;
        let size = cidr.size().min(u64::from(u32::MAX)) as u32;
        let mut ips = self.ips.lock().unwrap_or_else(|e| e.into_inner());
        let n = (2..size.saturating_sub(1))
            .map(|n| u32::from(cidr.nth(n)))
            .find(|n| !ips.contains(n))
            .unwrap_or(u32::from(cidr.nth(size.saturating_sub(2))));
        ips.insert(n);
        Ipv4Addr::from(n).to_string()
    }

    /// Keep `ip` (a pod's address before an agent restart) if it is in
    /// the node's range and free; otherwise allocate a new one.
    pub async fn claim_ip(&self, ip: &str) -> String {
        let cidr = self.pod_cidr().await;
        let n = ip
            .parse::<Ipv4Addr>()
            .ok()
            .filter(|a| cidr.offset(*a).is_some_and(|o| o >= 2))
            .map(u32::from);
        {
            let mut ips = self.ips.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = n {
                if ips.insert(n) {
                    return ip.to_string();
                }
            }
        }
        self.allocate_ip().await
    }

    /// Return a pod's address to the pool.
    pub fn release_ip(&self, ip: &str) {
        if let Ok(addr) = ip.parse::<Ipv4Addr>() {
            self.ips
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&u32::from(addr));
        }
    }

    /// Import the image tarballs waiting in the import directory (each
    /// once: an imported file is renamed `*.imported`).
    async fn import_images(&self) {
        let Some(oci) = &self.oci else { return };
        let dir = self.config.data_dir.join(IMPORT_DIR);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if !(name.ends_with(".tar")
                || name.ends_with(".tar.gz")
                || name.ends_with(".tar.zst")
                || name.ends_with(".tgz"))
            {
                continue;
            }
            match oci.images().import(&path).await {
                Ok(refs) => {
                    tracing::info!(file = %path.display(), images = ?refs, "imported images");
                    let mut done = path.clone().into_os_string();
                    done.push(".imported");
                    let _ = std::fs::rename(&path, done);
                }
                Err(err) => {
                    tracing::warn!(file = %path.display(), error = %err, "importing images")
                }
            }
        }
    }

    /// Start the pods recorded under the data directory by an earlier run
    /// of this agent, before (and whether or not) the control plane answers.
    fn resume_local_pods(self: &Arc<Self>, cache: &Cache) {
        let dir = self.config.data_dir.join("pods");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for e in entries.flatten() {
            let file = e.path().join(pod::LOCAL_STATE);
            let Ok(bytes) = std::fs::read(&file) else {
                continue;
            };
            match serde_json::from_slice::<Value>(&bytes) {
                Ok(p) if p["spec"]["nodeName"] == self.config.node_name.as_str() => {
                    tracing::info!(pod = %meta::name(&p), "resuming pod from local state");
                    cache.seed(p.clone());
                    self.resuming
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(format!("{}/{}", meta::namespace(&p), meta::name(&p)));
                    self.upsert(Arc::new(p));
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(file = %file.display(), error = %err, "ignoring unreadable local pod state")
                }
            }
        }
    }

    fn register_pod(&self, ns: &str, name: &str, ctx: Arc<pod::PodCtx>) {
        self.resuming
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&format!("{ns}/{name}"));
        self.pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(format!("{ns}/{name}"), ctx);
    }

    fn unregister_pod(&self, ns: &str, name: &str, uid: &str) {
        let mut pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        if pods
            .get(&format!("{ns}/{name}"))
            .is_some_and(|p| p.uid == uid)
        {
            pods.remove(&format!("{ns}/{name}"));
        }
    }

    /// Image garbage collection: if the image filesystem is past the high
    /// threshold, remove the Linux images no pod of this node names, least
    /// recently used first, down to the low threshold.
    pub async fn collect_images(&self) {
        let Some(oci) = self.oci.clone() else {
            return;
        };
        let in_use: Vec<String> = self
            .pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .flat_map(|p| p.images())
            .collect();
        let (high, low) = (self.config.image_gc_high, self.config.image_gc_low);
        let removed =
            tokio::task::spawn_blocking(move || oci.images().gc(&in_use, high, low)).await;
        match removed {
            Ok(Ok(refs)) if !refs.is_empty() => {
                tracing::info!(images = ?refs, "image garbage collection removed unused images")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "image garbage collection failed"),
            _ => {}
        }
    }

    /// Collect image garbage every five minutes (the kubelet's period).
    async fn image_gc_loop(self: Arc<Self>, mut cancel: CancelToken) {
        loop {
            self.collect_images().await;
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(300)) => {}
                _ = cancel.wait_for(|s| *s) => return,
            }
        }
    }

    /// Learn every API server of the cluster from the `default/kubernetes`
    /// Endpoints (each server adds itself when it joins), so the client
    /// fails over between them; again every 30 seconds.
    async fn follow_api_servers(self: Arc<Self>, mut cancel: CancelToken) {
        let endpoints = resources::lookup("endpoints").expect("endpoints are served");
        loop {
            if let Ok(ep) = self
                .client
                .get(endpoints, Some("default"), "kubernetes")
                .await
            {
                let servers = api_server_urls(&ep);
                if !servers.is_empty() {
                    self.client.set_servers(servers);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(30)) => {}
                _ = cancel.wait_for(|s| *s) => return,
            }
        }
    }

    /// Every pod worker, by `namespace/name`.
    pub fn pods_snapshot(&self) -> Vec<(String, Arc<pod::PodCtx>)> {
        self.pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Whether pod `ns/name` was found in local state at start and its
    /// worker has not registered yet.
    pub fn resuming(&self, ns: &str, name: &str) -> bool {
        self.resuming
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&format!("{ns}/{name}"))
    }

    /// The worker of pod `ns/name`, if it runs here.
    pub fn pod(&self, ns: &str, name: &str) -> Option<Arc<pod::PodCtx>> {
        self.pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&format!("{ns}/{name}"))
            .cloned()
    }

    fn upsert(self: &Arc<Self>, pod: Arc<Value>) {
        let uid = pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = workers.get(&uid) {
            tx.send_replace(Some(pod));
            return;
        }
        let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
        if matches!(phase, "Succeeded" | "Failed") && !meta::is_deleting(&pod) {
            return;
        }
        let (tx, rx) = watch::channel(Some(pod));
        workers.insert(uid.clone(), tx);
        let agent = self.clone();
        tokio::spawn(async move {
            pod::run(agent.clone(), rx).await;
            agent
                .workers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&uid);
        });
    }

    /// The pod is gone from the API: stop its worker, or (a finished pod no
    /// worker runs) remove what is left of it on disk.
    fn remove(&self, uid: &str) {
        let workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        match workers.get(uid) {
            Some(tx) => {
                tx.send_replace(None);
            }
            None if !uid.is_empty() => {
                let _ = std::fs::remove_dir_all(spec::pod_dir(&self.config.data_dir, uid));
            }
            None => {}
        }
    }

    /// List and watch the pods bound to this node, feeding their workers,
    /// through the same reflector the controllers use (resume, relist on
    /// 410, back-off). Pods resumed from local state are seeded into its
    /// cache, so the first list stops those deleted while the agent was away.
    async fn watch_pods(self: Arc<Self>, cache: Arc<Cache>, cancel: CancelToken) {
        let pods = resources::lookup("pods").expect("pods are served");
        let selector = format!("fieldSelector=spec.nodeName%3D{}", self.config.node_name);
        let agent = self.clone();
        let on_change = move |c: Change| match c {
            Change::Applied(p) => agent.upsert(p),
            Change::Deleted(p) => agent.remove(p["metadata"]["uid"].as_str().unwrap_or_default()),
        };
        runtime::reflect_selected(
            self.client.clone(),
            pods,
            &selector,
            cache,
            on_change,
            cancel,
        )
        .await
    }

    /// Cluster name resolution for the Wasm guests of a pod in `ns`.
    pub fn name_lookup(&self, ns: &str) -> wasmkube_runtime::NameLookup {
        let resolver = dns::Resolver {
            services: self.proxy.services.clone(),
            endpoints: self.proxy.endpoints.clone(),
        };
        let ns = ns.to_string();
        wasmkube_runtime::NameLookup(Arc::new(move |name: &str| resolver.lookup(name, &ns)))
    }

    /// The cluster DNS Service's address, once the Service is known.
    pub fn cluster_dns(&self) -> Option<String> {
        self.proxy
            .services
            .get("kube-system/kube-dns")
            .and_then(|s| {
                s["spec"]["clusterIP"]
                    .as_str()
                    .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok())
                    .map(String::from)
            })
    }

    /// Answer DNS on the cluster DNS Service's address once it is known.
    async fn serve_dns(self: Arc<Self>, mut cancel: CancelToken) {
        let addr = loop {
            let ip = self
                .proxy
                .services
                .get("kube-system/kube-dns")
                .and_then(|s| {
                    s["spec"]["clusterIP"]
                        .as_str()
                        .and_then(|ip| ip.parse().ok())
                });
            if let Some(ip) = ip {
                break std::net::SocketAddr::new(ip, 53);
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                _ = cancel.wait_for(|s| *s) => return,
            }
        };
        if let Err(e) = dns::serve(
            addr,
            self.proxy.services.clone(),
            self.proxy.endpoints.clone(),
            cancel,
        )
        .await
        {
            tracing::warn!(%addr, error = %e, "cluster DNS not served (binding port 53 needs root or CAP_NET_BIND_SERVICE)");
        }
    }

    /// Serve the agent API on `listen` over TLS with `identity`'s serving
    /// certificate, register, and run pods until `cancel` turns true.
    pub async fn run(
        self: Arc<Self>,
        listen: std::net::SocketAddr,
        identity: &identity::NodeIdentity,
        cancel: CancelToken,
    ) -> Result<(), AgentError> {
        let tls = crate::tls::server_config(
            &identity.serving,
            &identity.client_ca,
            crate::tls::ClientAuth::Required,
            crate::tls::Alpn::Http11,
        )
        .map_err(|e| AgentError::Tls(e.to_string()))?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(AgentError::Listen)?;
        let port = listener.local_addr().map_err(AgentError::Listen)?.port();
        self.import_images().await;
        let app = server::router(self.clone());
        let http = tokio::spawn(crate::tls::serve::serve(listener, tls, app, cancel.clone()));
        let node = tokio::spawn(node::run(self.clone(), port, cancel.clone()));
        let proxy = tokio::spawn(self.proxy.clone().run(self.client.clone(), cancel.clone()));
        let dns = tokio::spawn(self.clone().serve_dns(cancel.clone()));
        let sampler = tokio::spawn(metrics::run(self.clone(), cancel.clone()));
        let image_gc = tokio::spawn(self.clone().image_gc_loop(cancel.clone()));
        let servers = tokio::spawn(self.clone().follow_api_servers(cancel.clone()));
        let gateway = ingress::Gateway::new(self.proxy.clone(), self.functions.clone());
        let gateway = tokio::spawn(gateway.run(
            self.client.clone(),
            self.config.ingress_listen,
            self.config.ingress_tls_listen,
            cancel.clone(),
        ));
        let cache = Cache::new();
        self.resume_local_pods(&cache);
        let pods = tokio::spawn(self.clone().watch_pods(cache, cancel));
        let _ = pods.await;
        let _ = node.await;
        let _ = proxy.await;
        let _ = dns.await;
        let _ = sampler.await;
        let _ = image_gc.await;
        let _ = servers.await;
        let _ = gateway.await;
        let _ = http.await;
        Ok(())
    }
}

/// `https://ADDRESS:PORT` of every API server in the `default/kubernetes`
/// Endpoints.
fn api_server_urls(ep: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for subset in ep["subsets"].as_array().into_iter().flatten() {
        let Some(port) = subset["ports"]
            .as_array()
            .and_then(|p| p.iter().find_map(|p| p["port"].as_u64()))
        else {
            continue;
        };
        for a in subset["addresses"].as_array().into_iter().flatten() {
            if let Some(ip) = a["ip"].as_str() {
                let host = if ip.contains(':') {
                    format!("[{ip}]")
                } else {
                    ip.to_string()
                };
                out.push(format!("https://{host}:{port}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod api_server_tests {
    use super::api_server_urls;
    use serde_json::json;

    #[test]
    fn every_address_of_every_subset_is_a_server() {
        let ep = json!({"subsets": [
            {"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}], "ports": [{"name": "https", "port": 6443}]},
            {"addresses": [{"ip": "fd00::3"}], "ports": [{"name": "https", "port": 7443}]}]});
        assert_eq!(
            api_server_urls(&ep),
            [
                "https://10.0.0.1:6443",
                "https://10.0.0.2:6443",
                "https://[fd00::3]:7443"
            ]
        );
        assert!(api_server_urls(&json!({})).is_empty());
    }
}
