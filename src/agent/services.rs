//! The agent's Service proxy (kube-proxy's job) and Service discovery
//! environment.
//!
//! Every agent watches Services and Endpoints through the API and listens on
//! each Service's cluster IP and port, and on each node port at its node
//! address. The listening sockets use `SO_REUSEPORT`, so several agents on
//! one machine share the Service addresses (the kernel spreads connections
//! over them). A connection goes to a ready endpoint (round robin, or the
//! same one per client address with `sessionAffinity: ClientIP`) on any
//! node; an endpoint that refuses is skipped, so a replica that just died
//! costs the client nothing.
//!
//! [`listeners`], [`backends`] and [`service_env`] decide (pure).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::api::{meta, resources};
use crate::client::runtime::{self, Cache};
use crate::client::Client;
use crate::controllers::CancelToken;

/// How long a connection attempt to one endpoint may take before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What a listening address serves: a port of a Service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    /// `namespace/name` of the Service.
    pub service: String,
    /// The Service port's `port` (its key in `spec.ports`).
    pub port: i64,
}

fn str_at<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

/// The addresses this agent listens on, and what each serves: every TCP
/// port of every Service with a cluster IP, and for NodePort and
/// LoadBalancer Services their node ports on `node_ip`.
pub fn listeners(services: &[Arc<Value>], node_ip: IpAddr) -> BTreeMap<SocketAddr, Route> {
    let mut out = BTreeMap::new();
    for svc in services {
        // the cluster DNS address is answered by the agents' DNS servers
        if meta::is_deleting(svc)
            || (meta::namespace(svc) == "kube-system" && meta::name(svc) == "kube-dns")
        {
            continue;
        }
        let key = format!("{}/{}", meta::namespace(svc), meta::name(svc));
        let cluster_ip: Option<IpAddr> = str_at(svc, "/spec/clusterIP").parse().ok();
        for p in svc["spec"]["ports"].as_array().into_iter().flatten() {
            if p["protocol"].as_str().unwrap_or("TCP") != "TCP" {
                continue;
            }
            let Some(port) = p["port"].as_i64() else {
                continue;
            };
            let route = Route {
                service: key.clone(),
                port,
            };
            if let (Some(ip), Ok(port)) = (cluster_ip, u16::try_from(port)) {
                out.insert(SocketAddr::new(ip, port), route.clone());
            }
            if let Some(np) = p["nodePort"].as_u64().and_then(|n| u16::try_from(n).ok()) {
                if np != 0 {
                    out.insert(SocketAddr::new(node_ip, np), route);
                }
            }
        }
    }
    out
}

/// The ready endpoints of Service port `port` (by its `port`), from the
/// Service and its Endpoints.
pub fn backends(svc: &Value, endpoints: Option<&Value>, port: i64) -> Vec<SocketAddr> {
    let Some(sp) = svc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["port"].as_i64() == Some(port))
    else {
        return Vec::new();
    };
    let name = sp["name"].as_str().unwrap_or("");
    let mut out = Vec::new();
    for subset in endpoints
        .and_then(|e| e["subsets"].as_array())
        .into_iter()
        .flatten()
    {
        let Some(target) = subset["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"].as_str().unwrap_or("") == name)
            .and_then(|p| p["port"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for a in subset["addresses"].as_array().into_iter().flatten() {
            if let Ok(ip) = str_at(a, "/ip").parse::<IpAddr>() {
                out.push(SocketAddr::new(ip, target));
            }
        }
    }
    out
}

/// Kubernetes' Service environment variables for a pod of namespace `ns`:
/// `{NAME}_SERVICE_HOST`, `{NAME}_SERVICE_PORT`, `{NAME}_PORT_{P}_TCP…` for
/// every Service with a cluster IP in the namespace when service links are
/// on, and always for the `kubernetes` Service of `default`.
pub fn service_env(services: &[Arc<Value>], ns: &str, links: bool) -> Vec<(String, String)> {
    let mut chosen: Vec<&Arc<Value>> = services
        .iter()
        .filter(|s| {
            let ip = str_at(s, "/spec/clusterIP");
            !ip.is_empty() && ip != "None"
        })
        .filter(|s| {
            (links && meta::namespace(s) == ns)
                || (meta::namespace(s) == "default" && meta::name(s) == "kubernetes")
        })
        .collect();
    chosen.sort_by_key(|s| meta::name(s).to_string());
    let mut env = Vec::new();
    for svc in chosen {
        let prefix = meta::name(svc).to_ascii_uppercase().replace('-', "_");
        let ip = str_at(svc, "/spec/clusterIP");
        let ports = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
        let Some(first) = ports.first() else {
            continue;
        };
        env.push((format!("{prefix}_SERVICE_HOST"), ip.to_string()));
        env.push((
            format!("{prefix}_SERVICE_PORT"),
            first["port"].as_i64().unwrap_or(0).to_string(),
        ));
        for p in &ports {
            if let Some(name) = p["name"].as_str().filter(|n| !n.is_empty()) {
                env.push((
                    format!(
                        "{prefix}_SERVICE_PORT_{}",
                        name.to_ascii_uppercase().replace('-', "_")
                    ),
                    p["port"].as_i64().unwrap_or(0).to_string(),
                ));
            }
        }
        let proto = |p: &Value| p["protocol"].as_str().unwrap_or("TCP").to_string();
        env.push((
            format!("{prefix}_PORT"),
            format!(
                "{}://{ip}:{}",
                proto(first).to_ascii_lowercase(),
                first["port"].as_i64().unwrap_or(0)
            ),
        ));
        for p in &ports {
            let (port, proto) = (p["port"].as_i64().unwrap_or(0), proto(p));
            let base = format!("{prefix}_PORT_{port}_{proto}");
            let lower = proto.to_ascii_lowercase();
            env.push((base.clone(), format!("{lower}://{ip}:{port}")));
            env.push((format!("{base}_PROTO"), lower));
            env.push((format!("{base}_PORT"), port.to_string()));
            env.push((format!("{base}_ADDR"), ip.to_string()));
        }
    }
    env
}

/// A listening socket and the task accepting on it.
struct Listening {
    route: Route,
    task: JoinHandle<()>,
}

/// The proxy: caches of Services and Endpoints and the sockets it listens on.
pub struct ServiceProxy {
    pub services: Arc<Cache>,
    pub endpoints: Arc<Cache>,
    node_ip: IpAddr,
    listening: Mutex<BTreeMap<SocketAddr, Listening>>,
    next: AtomicUsize,
    /// `sessionAffinity: ClientIP`: the endpoint each client was sent to.
    affinity: Mutex<HashMap<(String, IpAddr), (SocketAddr, Instant)>>,
    changed: Notify,
    /// The API client, once running (activation requests).
    client: std::sync::OnceLock<Client>,
    /// When each Service was last asked to activate.
    activations: Mutex<HashMap<String, Instant>>,
}

/// How long a client waits for a Service scaled to zero to get a replica.
pub const ACTIVATION_TIMEOUT: Duration = Duration::from_secs(30);

impl ServiceProxy {
    pub fn new(node_ip: IpAddr) -> Arc<Self> {
        Arc::new(Self {
            services: Cache::new(),
            endpoints: Cache::new(),
            node_ip,
            listening: Mutex::default(),
            next: AtomicUsize::new(0),
            affinity: Mutex::default(),
            changed: Notify::new(),
            client: std::sync::OnceLock::new(),
            activations: Mutex::default(),
        })
    }

    /// The environment of a container of a pod in `ns`. Waits briefly for
    /// the first list of Services (not at all once it came; an agent with
    /// no control plane starts its pods without).
    pub async fn env(&self, ns: &str, links: bool) -> Vec<(String, String)> {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.services.wait_synced()).await;
        service_env(&self.services.all(), ns, links)
    }

    /// Watch Services and Endpoints and keep the listeners in step until `cancel`.
    pub async fn run(self: Arc<Self>, client: Client, cancel: CancelToken) {
        let _ = self.client.set(client.clone());
        let svc_res = resources::lookup("services").expect("services are served");
        let ep_res = resources::lookup("endpoints").expect("endpoints are served");
        let me = self.clone();
        let services = tokio::spawn(runtime::reflect(
            client.clone(),
            svc_res,
            self.services.clone(),
            move |_| me.changed.notify_one(),
            cancel.clone(),
        ));
        let endpoints = tokio::spawn(runtime::reflect(
            client,
            ep_res,
            self.endpoints.clone(),
            |_| {},
            cancel.clone(),
        ));
        let mut stop = cancel.clone();
        loop {
            self.sync().await;
            tokio::select! {
                _ = self.changed.notified() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        for (_, l) in std::mem::take(&mut *self.listening.lock().unwrap_or_else(|e| e.into_inner()))
        {
            l.task.abort();
        }
        let _ = services.await;
        let _ = endpoints.await;
    }

    /// Open and close listeners to match the Services.
    async fn sync(self: &Arc<Self>) {
        let want = listeners(&self.services.all(), self.node_ip);
        let mut listening = self.listening.lock().unwrap_or_else(|e| e.into_inner());
        listening.retain(|addr, l| {
            let keep = want.get(addr) == Some(&l.route);
            if !keep {
                l.task.abort();
            }
            keep
        });
        for (addr, route) in want {
            if listening.contains_key(&addr) {
                continue;
            }
            match bind(addr) {
                Ok(listener) => {
                    tracing::debug!(%addr, service = %route.service, "proxy listening");
                    let me = self.clone();
                    let r = route.clone();
                    let task = tokio::spawn(async move { me.accept(listener, r).await });
                    listening.insert(addr, Listening { route, task });
                }
                Err(e) => {
                    tracing::warn!(%addr, service = %route.service, error = %e, "cannot listen for the Service");
                }
            }
        }
    }

    async fn accept(self: Arc<Self>, listener: TcpListener, route: Route) {
        loop {
            let Ok((conn, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let me = self.clone();
            let route = route.clone();
            tokio::spawn(async move {
                if let Some(mut upstream) = me.connect(&route, peer.ip()).await {
                    let mut conn = conn;
                    let _ = conn.set_nodelay(true);
                    let _ = upstream.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
                }
            });
        }
    }

    /// The ready endpoints of a route, in the order to try them for `client`.
    pub fn candidates(&self, route: &Route, client: IpAddr) -> Vec<SocketAddr> {
        let Some(svc) = self.services.get(&route.service) else {
            return Vec::new();
        };
        let ep = self.endpoints.get(&route.service);
        let mut all = backends(&svc, ep.as_deref(), route.port);
        if all.is_empty() {
            return all;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % all.len();
        all.rotate_left(start);
        if svc["spec"]["sessionAffinity"] == "ClientIP" {
            let timeout = svc
                .pointer("/spec/sessionAffinityConfig/clientIP/timeoutSeconds")
                .and_then(Value::as_u64)
                .unwrap_or(10_800);
            let mut aff = self.affinity.lock().unwrap_or_else(|e| e.into_inner());
            let k = (route.service.clone(), client);
            if let Some((ep, at)) = aff.get(&k) {
                if at.elapsed() < Duration::from_secs(timeout) {
                    if let Some(i) = all.iter().position(|a| a == ep) {
                        all.swap(0, i);
                    }
                }
            }
            aff.insert(k, (all[0], Instant::now()));
        }
        all
    }

    /// The ready endpoints of a route, as [`ServiceProxy::candidates`]; for
    /// a Service its autoscaler scaled to zero, first ask for a replica and
    /// wait for one to be ready (up to [`ACTIVATION_TIMEOUT`]).
    pub async fn ready_candidates(&self, route: &Route, client: IpAddr) -> Vec<SocketAddr> {
        let found = self.candidates(route, client);
        let scaled_to_zero = |me: &Self| {
            me.services.get(&route.service).is_some_and(|s| {
                s["metadata"]["annotations"][crate::controllers::hpa::SCALED_TO_ZERO].is_string()
            })
        };
        if !found.is_empty() || !scaled_to_zero(self) {
            return found;
        }
        let deadline = Instant::now() + ACTIVATION_TIMEOUT;
        loop {
            self.request_activation(&route.service);
            tokio::time::sleep(Duration::from_millis(5)).await;
            let found = self.candidates(route, client);
            if !found.is_empty() || Instant::now() >= deadline {
                return found;
            }
        }
    }

    /// Mark the Service as wanted (at most once a second); the autoscaler
    /// scales its Deployment up from zero.
    fn request_activation(&self, service: &str) {
        {
            let mut last = self.activations.lock().unwrap_or_else(|e| e.into_inner());
            if last
                .get(service)
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
            {
                return;
            }
            last.insert(service.to_string(), Instant::now());
        }
        let Some(client) = self.client.get().cloned() else {
            return;
        };
        let (ns, name) = service.split_once('/').unwrap_or(("default", service));
        let (ns, name) = (ns.to_string(), name.to_string());
        tokio::spawn(async move {
            let res = resources::lookup("services").expect("services are served");
            let patch = serde_json::json!({"metadata": {"annotations": {
                crate::controllers::hpa::ACTIVATION_REQUESTED: crate::api::meta::now()}}});
            if let Err(e) = client.merge_patch(res, Some(&ns), &name, &patch).await {
                tracing::debug!(service = %name, error = %e, "activation request");
            }
        });
    }

    /// Connect to a ready endpoint, skipping those that refuse.
    pub async fn connect(&self, route: &Route, client: IpAddr) -> Option<TcpStream> {
        for addr in self.ready_candidates(route, client).await {
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    if let Some(aff) = self
                        .affinity
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_mut(&(route.service.clone(), client))
                    {
                        aff.0 = addr;
                    }
                    return Some(s);
                }
                Ok(Err(e)) => tracing::debug!(%addr, error = %e, "endpoint refused"),
                Err(_) => tracing::debug!(%addr, "endpoint timed out"),
            }
        }
        None
    }
}

/// Listen on `addr`, sharing it with other agents of this machine.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc() -> Arc<Value> {
        Arc::new(json!({"metadata": {"name": "web-front", "namespace": "d"},
            "spec": {"type": "NodePort", "clusterIP": "127.32.0.7", "ports": [
                {"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080},
                {"name": "dns", "port": 53, "protocol": "UDP"}]}}))
    }

    #[test]
    fn listeners_cover_cluster_ips_and_node_ports() {
        let node: IpAddr = "127.0.0.2".parse().unwrap();
        let l = listeners(&[svc()], node);
        let route = Route {
            service: "d/web-front".into(),
            port: 80,
        };
        assert_eq!(l.len(), 2, "{l:?}");
        assert_eq!(l.get(&"127.32.0.7:80".parse().unwrap()), Some(&route));
        assert_eq!(l.get(&"127.0.0.2:30080".parse().unwrap()), Some(&route));
        let headless = Arc::new(json!({"metadata": {"name": "h", "namespace": "d"},
            "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}));
        assert!(listeners(&[headless], node).is_empty());
    }

    #[test]
    fn backends_are_the_ready_addresses_of_the_named_port() {
        let ep = json!({"subsets": [
            {"addresses": [{"ip": "127.64.0.2"}], "notReadyAddresses": [{"ip": "127.64.0.3"}],
             "ports": [{"name": "http", "port": 8080}]},
            {"addresses": [{"ip": "127.64.32.2"}], "ports": [{"name": "http", "port": 9090}]}]});
        let b = backends(&svc(), Some(&ep), 80);
        assert_eq!(
            b,
            vec![
                "127.64.0.2:8080".parse().unwrap(),
                "127.64.32.2:9090".parse().unwrap()
            ]
        );
        assert!(backends(&svc(), None, 80).is_empty());
        assert!(backends(&svc(), Some(&ep), 81).is_empty());
    }

    #[test]
    fn round_robin_spreads_and_client_ip_affinity_sticks() {
        let proxy = ServiceProxy::new("127.0.0.1".parse().unwrap());
        let mut svc = (*svc()).clone();
        proxy.services.seed(svc.clone());
        proxy.endpoints.seed(json!({"metadata": {"name": "web-front", "namespace": "d"},
            "subsets": [{"addresses": [{"ip": "127.64.0.2"}, {"ip": "127.64.0.3"}, {"ip": "127.64.0.4"}],
                "ports": [{"name": "http", "port": 8080}]}]}));
        let route = Route {
            service: "d/web-front".into(),
            port: 80,
        };
        let a: IpAddr = "127.0.0.9".parse().unwrap();
        let firsts: std::collections::BTreeSet<SocketAddr> =
            (0..6).map(|_| proxy.candidates(&route, a)[0]).collect();
        assert_eq!(firsts.len(), 3, "round robin reaches every endpoint");
        svc["spec"]["sessionAffinity"] = json!("ClientIP");
        proxy.services.seed(svc);
        let first = proxy.candidates(&route, a)[0];
        for _ in 0..5 {
            assert_eq!(
                proxy.candidates(&route, a)[0],
                first,
                "the same client, the same endpoint"
            );
        }
        assert_eq!(
            proxy.candidates(&route, a).len(),
            3,
            "the others stay as fallbacks"
        );
    }

    #[test]
    fn env_follows_kubernetes_naming() {
        let kube = Arc::new(
            json!({"metadata": {"name": "kubernetes", "namespace": "default"},
            "spec": {"clusterIP": "127.32.0.1", "ports": [{"name": "https", "port": 443, "protocol": "TCP"}]}}),
        );
        let env: HashMap<_, _> = service_env(&[svc(), kube.clone()], "d", true)
            .into_iter()
            .collect();
        assert_eq!(env["WEB_FRONT_SERVICE_HOST"], "127.32.0.7");
        assert_eq!(env["WEB_FRONT_SERVICE_PORT"], "80");
        assert_eq!(env["WEB_FRONT_SERVICE_PORT_HTTP"], "80");
        assert_eq!(env["WEB_FRONT_PORT"], "tcp://127.32.0.7:80");
        assert_eq!(env["WEB_FRONT_PORT_80_TCP"], "tcp://127.32.0.7:80");
        assert_eq!(env["WEB_FRONT_PORT_80_TCP_ADDR"], "127.32.0.7");
        assert_eq!(env["WEB_FRONT_PORT_53_UDP_PROTO"], "udp");
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "127.32.0.1");
        // enableServiceLinks: false leaves only the kubernetes Service
        let env = service_env(&[svc(), kube], "d", false);
        assert!(env.iter().all(|(k, _)| k.starts_with("KUBERNETES_")));
    }
}
