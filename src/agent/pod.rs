//! One worker per pod: prepares its volumes, runs init containers in order,
//! then supervises each container under the pod's restart policy with the
//! kubelet's back-off, reports status through the API, and on deletion stops
//! everything and removes the pod object.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};
use wasmkube_runtime::oci::images::ImageKind;
use wasmkube_runtime::{ContainerId, ContainerRuntime, ContainerState, Exit, RuntimeError};

use super::probe::{self, Probe, Tracker, Transition};
use super::spec::{self, Lookup};
use super::status::{self, CState, ContainerRecord, PodRecord};
use super::Agent;
use crate::api::meta;

/// The file in a pod's directory holding its last known object and status,
/// from which a restarted agent resumes it.
pub const LOCAL_STATE: &str = "pod.json";

/// The least time between two status writes of a pod. A change after a
/// quiet spell is written at once; changes that follow a write within this
/// window wait for its end and share one PATCH.
const STATUS_COALESCE: Duration = Duration::from_millis(5);

/// How long fetched ConfigMaps and Secrets serve a pod's start.
const DATA_FRESH: Duration = Duration::from_secs(1);

/// How long a new pod's first status waits for its containers to start: a
/// pod that starts quickly reports Running in its first status write
/// instead of Pending and then Running.
const FIRST_STATUS: Duration = Duration::from_millis(100);

/// Back-off is reset once a container has run this long.
const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// How long after an agent restart exec and attach wait for a container
/// left running by the earlier run to be adopted.
pub const ADOPT_WAIT: Duration = Duration::from_secs(10);

fn ts(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t)
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Init containers or main containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Init,
    Main,
}

impl Kind {
    fn list(self) -> &'static str {
        match self {
            Kind::Init => "initContainers",
            Kind::Main => "containers",
        }
    }
}

/// A container's probes.
#[derive(Default)]
struct Probes {
    startup: Option<Probe>,
    liveness: Option<Probe>,
    readiness: Option<Probe>,
}

/// Shared state of one pod's worker.
pub struct PodCtx {
    agent: Arc<Agent>,
    pub uid: String,
    namespace: String,
    name: String,
    /// The latest object, shared with the agent's pod cache: a deep copy
    /// per pod was the largest item of an idle node's heap.
    pod: watch::Receiver<Option<Arc<Value>>>,
    rec: Mutex<PodRecord>,
    dirty: Notify,
    stop: watch::Receiver<bool>,
    /// Stops the native sidecars (init containers with `restartPolicy:
    /// Always`): once the main containers have finished, as the kubelet
    /// stops them after the containers they serve.
    sidecars_stop: watch::Receiver<bool>,
    sandbox: Mutex<Option<Sandbox>>,
    /// The ConfigMaps and Secrets last fetched, and when: a start asks for
    /// them up to three times within milliseconds (sandbox, volumes,
    /// container), and one fetch serves them all.
    data: Mutex<Option<(std::time::Instant, Arc<Data>)>>,
    /// When this worker started, if an earlier run of the agent left
    /// containers running for it to adopt.
    resumed: Option<std::time::Instant>,
}

/// A pod's network namespace and the forwards into it.
struct Sandbox {
    path: PathBuf,
    ns: Arc<wasmkube_runtime::sandbox::NetnsRuntime>,
    forwarders: Vec<tokio::task::JoinHandle<()>>,
}

struct Data {
    configmaps: BTreeMap<String, BTreeMap<String, String>>,
    secrets: BTreeMap<String, BTreeMap<String, String>>,
    /// The control plane could not be reached: volumes prepared by an
    /// earlier run of this agent are used as they are.
    offline: bool,
}

impl Lookup for Data {
    fn configmap(&self, name: &str) -> Option<BTreeMap<String, String>> {
        self.configmaps.get(name).cloned()
    }
    fn secret(&self, name: &str) -> Option<BTreeMap<String, String>> {
        self.secrets.get(name).cloned()
    }
}

impl PodCtx {
    /// The images the pod's containers name.
    pub fn images(&self) -> Vec<String> {
        let pod = self.pod();
        ["initContainers", "containers"]
            .iter()
            .flat_map(|k| pod["spec"][k].as_array().cloned().unwrap_or_default())
            .filter_map(|c| c["image"].as_str().map(String::from))
            .collect()
    }

    fn pod(&self) -> Arc<Value> {
        self.pod.borrow().clone().unwrap_or_default()
    }

    fn update(&self, kind: Kind, idx: usize, f: impl FnOnce(&mut ContainerRecord)) {
        self.update_quietly(kind, idx, f);
        self.dirty.notify_one();
    }

    /// Change a container's record without reporting it yet: the next
    /// status write carries it.
    fn update_quietly(&self, kind: Kind, idx: usize, f: impl FnOnce(&mut ContainerRecord)) {
        {
            let mut rec = self.rec.lock().unwrap_or_else(|e| e.into_inner());
            let list = match kind {
                Kind::Init => &mut rec.init,
                Kind::Main => &mut rec.containers,
            };
            if let Some(c) = list.get_mut(idx) {
                f(c);
            }
        }
    }

    /// The pod's IP address.
    pub fn pod_ip(&self) -> String {
        self.record().pod_ip
    }

    /// Whether `container` is one an earlier run of the agent left running
    /// and this run has not adopted (or replaced) yet: a request for it
    /// should wait a moment rather than fail.
    pub fn adopting(&self, container: &str) -> bool {
        if self.resumed.is_none_or(|at| at.elapsed() > ADOPT_WAIT) || self.stopping() {
            return false;
        }
        let rec = self.record();
        rec.containers
            .iter()
            .chain(rec.init.iter())
            .find(|c| c.name == container)
            .is_some_and(|c| matches!(c.state, CState::Waiting { .. }))
    }

    fn record(&self) -> PodRecord {
        self.rec.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Report an event about the pod (queued: the pod does not wait for it).
    fn event(&self, event_type: &str, reason: &str, message: &str) {
        let pod = self.pod();
        if pod.is_null() {
            return;
        }
        self.agent.recorder.emit(&pod, event_type, reason, message);
    }

    /// Sleep for `d` unless the pod is being stopped; returns false if stopped.
    async fn pause(&self, d: Duration) -> bool {
        self.pause_for(d, false).await
    }

    /// The signal that stops a container: the pod's, or for a native
    /// sidecar the sidecars' own.
    fn halt(&self, sidecar: bool) -> watch::Receiver<bool> {
        if sidecar {
            self.sidecars_stop.clone()
        } else {
            self.stop.clone()
        }
    }

    fn halted(&self, sidecar: bool) -> bool {
        *self.halt(sidecar).borrow()
    }

    /// Wait `d`; false if the container is to stop meanwhile.
    async fn pause_for(&self, d: Duration, sidecar: bool) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => !self.halted(sidecar),
            _ = stopped(self.halt(sidecar)) => false,
        }
    }

    /// The ConfigMaps and Secrets the pod names: fetched unless fetched
    /// within [`DATA_FRESH`], so a restart sees changed values.
    async fn lookup_data(&self) -> Arc<Data> {
        if let Some((at, data)) = &*self.data.lock().unwrap_or_else(|e| e.into_inner()) {
            if at.elapsed() < DATA_FRESH {
                return data.clone();
            }
        }
        let data = Arc::new(self.fetch_data().await);
        if !data.offline {
            *self.data.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((std::time::Instant::now(), data.clone()));
        }
        data
    }

    /// The ConfigMaps and Secrets the pod names, fetched one by one (the
    /// Node authorizer lets an agent read exactly these).
    async fn fetch_data(&self) -> Data {
        let refs = crate::api::podrefs::pod_refs(&self.pod());
        let offline = std::sync::atomic::AtomicBool::new(false);
        let get = |kind: &'static str, name: String| {
            let offline = &offline;
            async move {
                let path = format!("/api/v1/namespaces/{}/{kind}/{name}", self.namespace);
                match self.agent.client.request(Method::GET, &path, None).await {
                    Ok(v) => Some((name, v)),
                    Err(e) => {
                        if e.code().is_none() {
                            offline.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                        if !e.is_not_found() {
                            tracing::warn!(pod = %self.name, %kind, object = %name, error = %e, "fetching");
                        }
                        None
                    }
                }
            }
        };
        let (configmaps, secrets) = tokio::join!(
            futures::future::join_all(refs.configmaps.into_iter().map(|n| get("configmaps", n))),
            futures::future::join_all(refs.secrets.into_iter().map(|n| get("secrets", n)))
        );
        Data {
            configmaps: configmaps
                .into_iter()
                .flatten()
                .map(|(n, cm)| (n, spec::configmap_data(&cm)))
                .collect(),
            secrets: secrets
                .into_iter()
                .flatten()
                .map(|(n, s)| (n, spec::secret_data(&s)))
                .collect(),
            offline: offline.into_inner(),
        }
    }

    /// The log file of `container`'s current run, or of the one before (`previous`).
    pub fn log_file(&self, container: &str, previous: bool) -> Result<(PathBuf, bool), String> {
        let rec = self.record();
        let c = rec
            .containers
            .iter()
            .chain(rec.init.iter())
            .find(|c| c.name == container)
            .ok_or_else(|| format!("container {container} is not valid for pod {}", self.name))?;
        let running = matches!(c.state, CState::Running { .. });
        if previous {
            if c.restart_count == 0 {
                return Err(format!(
                    "previous terminated container {container:?} in pod {:?} not found",
                    self.name
                ));
            }
            Ok((self.log_path(container, c.restart_count - 1), false))
        } else {
            Ok((self.log_path(container, c.restart_count), running))
        }
    }

    /// Whether `container` is running its current attempt.
    pub fn is_running(&self, container: &str) -> bool {
        let rec = self.record();
        rec.containers
            .iter()
            .chain(rec.init.iter())
            .any(|c| c.name == container && matches!(c.state, CState::Running { .. }))
    }

    /// The runtime and id of `container`'s current run, if it is running.
    pub fn exec_target(
        &self,
        container: &str,
    ) -> Result<(Arc<dyn ContainerRuntime>, ContainerId), String> {
        let rec = self.record();
        let c = rec
            .containers
            .iter()
            .chain(rec.init.iter())
            .find(|c| c.name == container)
            .ok_or_else(|| format!("container {container} is not valid for pod {}", self.name))?;
        if !matches!(c.state, CState::Running { .. }) {
            return Err(format!(
                "unable to upgrade connection: container not found ({container:?}): it is not running"
            ));
        }
        let (rt_name, id) = c
            .container_id
            .split_once("://")
            .ok_or_else(|| format!("container {container} has no id yet"))?;
        let rt = self
            .agent
            .runtimes
            .iter()
            .find(|r| r.name() == rt_name)
            .cloned()
            .ok_or_else(|| format!("no runtime {rt_name:?} on this node"))?;
        Ok((rt, ContainerId(id.to_string())))
    }

    /// The names of the pod's containers.
    pub fn container_names(&self) -> Vec<String> {
        self.record()
            .containers
            .iter()
            .map(|c| c.name.clone())
            .collect()
    }

    fn log_path(&self, container: &str, restart: u32) -> PathBuf {
        spec::pod_dir(&self.agent.config.data_dir, &self.uid)
            .join("logs")
            .join(container)
            .join(format!("{restart}.log"))
    }

    /// Host directories for the pod's volumes (projecting ConfigMaps and Secrets as files).
    async fn prepare_volumes(&self, data: &Data) -> Result<BTreeMap<String, PathBuf>, String> {
        let pod = self.pod();
        let base = spec::pod_dir(&self.agent.config.data_dir, &self.uid).join("volumes");
        let mut out = BTreeMap::new();
        let mut writes = Writes::default();
        for v in pod
            .pointer("/spec/volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = v["name"].as_str().unwrap_or_default().to_string();
            let dir = if v.get("emptyDir").is_some() {
                base.join("empty").join(&name)
            } else if let Some(h) = v.get("hostPath") {
                PathBuf::from(h["path"].as_str().unwrap_or_default())
            } else if let Some(c) = v.get("persistentVolumeClaim") {
                self.agent
                    .config
                    .data_dir
                    .join("claims")
                    .join(&self.namespace)
                    .join(c["claimName"].as_str().unwrap_or_default())
            } else if let Some(src) = v.get("configMap").or_else(|| v.get("secret")) {
                let is_cm = v.get("configMap").is_some();
                let source = if is_cm {
                    src["name"].as_str()
                } else {
                    src["secretName"].as_str()
                }
                .unwrap_or_default();
                let dir = base
                    .join(if is_cm { "configmap" } else { "secret" })
                    .join(&name);
                write_source(&mut writes, &dir, &name, src, source, is_cm, data)?;
                out.insert(name, dir);
                continue;
            } else if let Some(p) = v.get("projected") {
                let dir = base.join("projected").join(&name);
                self.project(&mut writes, &dir, &name, p, data).await?;
                out.insert(name, dir);
                continue;
            } else {
                return Err(format!("volume {name:?}: unsupported volume type"));
            };
            writes.dir(&dir);
            out.insert(name, dir);
        }
        writes.apply().await?;
        Ok(out)
    }

    /// Fill a projected volume: ConfigMaps, Secrets, downward API fields
    /// and a ServiceAccount token, refreshed before it expires.
    async fn project(
        &self,
        writes: &mut Writes,
        dir: &Path,
        volume: &str,
        p: &Value,
        data: &Data,
    ) -> Result<(), String> {
        writes.dir(dir);
        let pod = self.pod();
        for src in p["sources"].as_array().into_iter().flatten() {
            if let Some(c) = src.get("configMap") {
                let n = c["name"].as_str().unwrap_or_default();
                write_source(writes, dir, volume, c, n, true, data)?;
            } else if let Some(c) = src.get("secret") {
                let n = c["name"].as_str().unwrap_or_default();
                write_source(writes, dir, volume, c, n, false, data)?;
            } else if let Some(d) = src.get("downwardAPI") {
                for item in d["items"].as_array().into_iter().flatten() {
                    let path = item["path"].as_str().unwrap_or_default();
                    let field = item["fieldRef"]["fieldPath"].as_str().unwrap_or_default();
                    let value =
                        spec::field_ref(&pod, field, &self.record().pod_ip).ok_or_else(|| {
                            format!("volume {volume}: unsupported fieldPath {field:?}")
                        })?;
                    writes.file(dir, volume, path, value.into_bytes())?;
                }
            } else if let Some(t) = src.get("serviceAccountToken") {
                let path = t["path"].as_str().unwrap_or("token").to_string();
                let request = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                    "spec": {
                        "audiences": t["audience"].as_str().map(|a| vec![a]).unwrap_or_default(),
                        "expirationSeconds": t["expirationSeconds"].as_i64().unwrap_or(3607),
                        "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": self.name, "uid": self.uid}}});
                let sa = crate::api::podrefs::pod_refs(&pod).service_account;
                let url = format!(
                    "/api/v1/namespaces/{}/serviceaccounts/{sa}/token",
                    self.namespace
                );
                let lifetime = match request_token(&self.agent.client, &url, &request, volume).await
                {
                    Ok((token, l)) => {
                        writes.file(dir, volume, &path, token.into_bytes())?;
                        l
                    }
                    // no control plane: keep the token of the last run, renew when it is back
                    Err(e) if data.offline && dir.join(&path).exists() => {
                        tracing::info!(pod = %self.name, error = %e, "keeping the previous ServiceAccount token");
                        Duration::from_secs(30)
                    }
                    Err(e) => return Err(e),
                };
                tokio::spawn(refresh_token(
                    self.agent.client.clone(),
                    url,
                    request,
                    dir.to_path_buf(),
                    volume.to_string(),
                    path,
                    lifetime,
                    self.stop.clone(),
                ));
            }
        }
        Ok(())
    }

    /// The runtime for a container: Linux images go to runc, Wasm
    /// artifacts (and `file://` modules) to wasmtime, told apart by what
    /// the image is.
    async fn runtime_for(
        &self,
        spec: &wasmkube_runtime::ContainerSpec,
    ) -> Result<Arc<dyn ContainerRuntime>, RuntimeError> {
        let by_name = |n: &str| self.agent.runtimes.iter().find(|r| r.name() == n).cloned();
        if let Some(oci) = &self.agent.oci {
            if oci.supports(&spec.image) {
                let kind = oci
                    .image_kind(
                        &spec.image,
                        spec.pull_policy,
                        spec.pull_credentials.as_ref(),
                    )
                    .await;
                // not among the Linux images with `Never`: the Wasm store
                // may hold it, and answers for itself
                let kind = match kind {
                    Err(RuntimeError::NeverPull { .. }) => ImageKind::Wasm,
                    k => k?,
                };
                if kind == ImageKind::Linux {
                    return by_name("oci").ok_or_else(|| RuntimeError::Create {
                        id: spec.id.clone(),
                        reason: "no OCI runtime on this node".into(),
                    });
                }
            }
        }
        by_name("wasm").ok_or_else(|| RuntimeError::Create {
            id: spec.id.clone(),
            reason: format!("no runtime on this node runs image {:?}", spec.image),
        })
    }

    /// Say "Pulling" (unless the container is one to adopt), then choose
    /// the runtime: telling an image's kind may already fetch its manifest.
    async fn announce_and_choose(
        &self,
        kind: Kind,
        idx: usize,
        spec: &wasmkube_runtime::ContainerSpec,
    ) -> Result<Arc<dyn ContainerRuntime>, RuntimeError> {
        let resumed = self.record_of(kind, idx).container_id.ends_with(&spec.id.0);
        if !resumed {
            let image = &spec.image;
            self.event("Normal", "Pulling", &format!("Pulling image {image:?}"));
        }
        self.runtime_for(spec).await
    }

    /// Follow a container an earlier run of this agent started (its
    /// record names this attempt), instead of starting it again.
    fn adopt(
        &self,
        kind: Kind,
        idx: usize,
        rt: &Arc<dyn ContainerRuntime>,
        spec: &wasmkube_runtime::ContainerSpec,
    ) -> bool {
        let rec = self.record_of(kind, idx);
        if rec.container_id != format!("{}://{}", rt.name(), spec.id) || rt.name() != "oci" {
            return false;
        }
        let Some(oci) = &self.agent.oci else {
            return false;
        };
        let adopted = oci.adopt(spec.clone()).is_some();
        if adopted {
            tracing::info!(pod = %self.name, container = %rec.name, "adopted a running container");
        }
        adopted
    }

    /// The pod's network namespace, if it has one.
    fn sandbox_path(&self) -> Option<PathBuf> {
        self.sandbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|s| s.path.clone())
    }

    /// A pod with a Linux container gets a network namespace of its own
    /// (unless `hostNetwork`), and its declared ports are forwarded from
    /// the pod's address on the node into it.
    async fn prepare_sandbox(&self) -> Result<(), String> {
        let pod = self.pod();
        if pod["spec"]["hostNetwork"].as_bool().unwrap_or(false) {
            return Ok(());
        }
        let Some(oci) = &self.agent.oci else {
            return Ok(());
        };
        let mut linux = false;
        let data = self.lookup_data().await;
        for c in ["initContainers", "containers"]
            .iter()
            .flat_map(|k| pod["spec"][k].as_array().cloned().unwrap_or_default())
        {
            let image = c["image"].as_str().unwrap_or_default();
            if !oci.supports(image) {
                continue;
            }
            let policy = wasmkube_runtime::image::PullPolicy::parse(
                c["imagePullPolicy"].as_str().unwrap_or("IfNotPresent"),
            );
            let creds = spec::pull_credentials(&pod, image, &*data);
            // an image that cannot be looked at yet fails in its container
            if let Ok(ImageKind::Linux) = oci.image_kind(image, policy, creds.as_ref()).await {
                linux = true;
                break;
            }
        }
        if !linux {
            return Ok(());
        }
        let path = self.agent.config.data_dir.join("netns").join(&self.uid);
        let p = path.clone();
        tokio::task::spawn_blocking(move || wasmkube_runtime::sandbox::create(&p))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("creating the pod's network namespace: {e}"))?;
        let ns = Arc::new(
            wasmkube_runtime::sandbox::NetnsRuntime::start(&path)
                .map_err(|e| format!("entering the pod's network namespace: {e}"))?,
        );
        let ip: std::net::IpAddr = self
            .record()
            .pod_ip
            .parse()
            .map_err(|e| format!("pod address: {e}"))?;
        let mut ports: Vec<u16> = super::sandbox::container_ports(&pod);
        ports.sort_unstable();
        ports.dedup();
        let mut forwarders = Vec::new();
        for port in ports {
            match super::sandbox::forward(ip, port, ns.clone()).await {
                Ok(task) => forwarders.push(task),
                Err(e) => self.event(
                    "Warning",
                    "FailedToForward",
                    &format!("cannot forward {ip}:{port} into the pod: {e}"),
                ),
            }
        }
        match super::sandbox::egress(
            ns.clone(),
            ip,
            meta::namespace(&pod).to_string(),
            self.agent.proxy.services.clone(),
            self.agent.proxy.endpoints.clone(),
        )
        .await
        {
            Ok(tasks) => forwarders.extend(tasks),
            Err(e) => self.event(
                "Warning",
                "SandboxNetwork",
                &format!("the pod cannot reach Services, other pods or the cluster DNS: {e}"),
            ),
        }
        *self.sandbox.lock().unwrap_or_else(|e| e.into_inner()) = Some(Sandbox {
            path,
            ns,
            forwarders,
        });
        Ok(())
    }

    /// Let go of the pod's network namespace.
    async fn release_sandbox(&self) {
        let sandbox = self
            .sandbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(s) = sandbox {
            for f in &s.forwarders {
                f.abort();
            }
            let path = s.path.clone();
            drop(s);
            let _ =
                tokio::task::spawn_blocking(move || wasmkube_runtime::sandbox::remove(&path)).await;
        }
    }

    /// Run one container until it will not be restarted; returns its last exit.
    async fn supervise(
        &self,
        kind: Kind,
        idx: usize,
        volumes: &BTreeMap<String, PathBuf>,
    ) -> Option<Exit> {
        let cfg = &self.agent.config;
        let mut backoff = cfg.backoff_base;
        let sidecar = kind == Kind::Init && is_sidecar(&self.pod()["spec"][kind.list()][idx]);
        loop {
            if self.halted(sidecar) {
                return None;
            }
            let pod = self.pod();
            let def = pod["spec"][kind.list()][idx].clone();
            let name = def["name"].as_str().unwrap_or_default().to_string();
            let image = def["image"].as_str().unwrap_or_default().to_string();
            let restart_policy = pod["spec"]["restartPolicy"]
                .as_str()
                .unwrap_or("Always")
                .to_string();
            let restart = self.record_of(kind, idx).restart_count;
            // The steps of a start are boxed: a future is as big as the
            // largest step it awaits inline, and this one lives as long as
            // its container, idle or not.
            let data = Box::pin(self.lookup_data()).await;
            let links = pod["spec"]["enableServiceLinks"].as_bool().unwrap_or(true);
            let service_env = Box::pin(self.agent.proxy.env(meta::namespace(&pod), links)).await;
            let pod_ip = self.record().pod_ip;
            let failure = match spec::container_spec(
                &pod,
                &def,
                restart,
                volumes,
                &*data,
                &pod_ip,
                self.log_path(&name, restart),
                &service_env,
            ) {
                Err(e) => Some((
                    "CreateContainerConfigError",
                    e.0,
                    "CreateContainerConfigError",
                )),
                Ok(mut spec) => match Box::pin(self.announce_and_choose(kind, idx, &spec)).await {
                    Err(RuntimeError::Pull { reason, .. }) => {
                        Some(("ErrImagePull", reason, "ImagePullBackOff"))
                    }
                    Err(e @ RuntimeError::NeverPull { .. }) => {
                        Some(("ErrImageNeverPull", e.to_string(), "ErrImageNeverPull"))
                    }
                    Err(e) => Some((
                        "CreateContainerError",
                        e.to_string(),
                        "CreateContainerError",
                    )),
                    Ok(rt) => {
                        let id = spec.id.clone();
                        spec.name_lookup = Some(self.agent.name_lookup(meta::namespace(&pod)));
                        spec.sandbox = self.sandbox_path();
                        spec.linux.resolv_conf = Some(spec::resolv_conf(
                            &pod,
                            self.agent.cluster_dns().as_deref(),
                            &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
                        ));
                        let adopted = self.adopt(kind, idx, &rt, &spec);
                        let created = if adopted {
                            Ok(None)
                        } else {
                            rt.create(spec).await.map(Some)
                        };
                        match created {
                            Err(RuntimeError::Pull { reason, .. }) => {
                                Some(("ErrImagePull", reason, "ImagePullBackOff"))
                            }
                            Err(e @ RuntimeError::NeverPull { .. }) => {
                                Some(("ErrImageNeverPull", e.to_string(), "ErrImageNeverPull"))
                            }
                            Err(e) => Some((
                                "CreateContainerError",
                                e.to_string(),
                                "CreateContainerError",
                            )),
                            Ok(created) => {
                                let started = match created {
                                    None => Ok(()),
                                    Some(created) => {
                                        // reported with the start, a moment later
                                        self.update_quietly(kind, idx, |c| {
                                            c.image_id = created.image_id.clone()
                                        });
                                        self.event(
                                            "Normal",
                                            "Pulled",
                                            &format!("Successfully pulled image {image:?}"),
                                        );
                                        self.event(
                                            "Normal",
                                            "Created",
                                            &format!("Created container {name}"),
                                        );
                                        rt.start(&id).await
                                    }
                                };
                                if let Err(e) = started {
                                    Some((
                                        "CreateContainerError",
                                        e.to_string(),
                                        "CreateContainerError",
                                    ))
                                } else {
                                    self.event(
                                        "Normal",
                                        "Started",
                                        &format!("Started container {name}"),
                                    );
                                    // this version of the pod is not kept while it runs
                                    drop(pod);
                                    let serving =
                                        Box::pin(self.serve_function(&rt, &id, &def)).await;
                                    let exit = self
                                        .watch_container(kind, idx, &rt, &id, &name, adopted)
                                        .await;
                                    if let Some(task) = serving {
                                        task.abort();
                                    }
                                    let _ = rt.remove(&id).await;
                                    let ran = exit
                                        .finished_at
                                        .duration_since(exit.started_at)
                                        .unwrap_or_default();
                                    if ran >= BACKOFF_RESET {
                                        backoff = cfg.backoff_base;
                                    }
                                    if self.halted(sidecar) {
                                        return Some(exit);
                                    }
                                    let again = match (kind, restart_policy.as_str()) {
                                        _ if sidecar => true,
                                        (_, "Never") => false,
                                        (Kind::Init, _) | (_, "OnFailure") => exit.exit_code != 0,
                                        _ => true,
                                    };
                                    if !again {
                                        return Some(exit);
                                    }
                                    let wait = backoff;
                                    self.update(kind, idx, |c| {
                                        c.last_state = Some(c.state.clone());
                                        c.restart_count += 1;
                                        c.state = CState::Waiting {
                                            reason: "CrashLoopBackOff".into(),
                                            message: Some(format!("back-off {}s restarting failed container={name} pod={}_{}({})", wait.as_secs(), self.name, self.namespace, self.uid)),
                                        };
                                    });
                                    self.event("Warning", "BackOff", &format!("Back-off restarting failed container {name} in pod {}_{}({})", self.name, self.namespace, self.uid));
                                    None
                                }
                            }
                        }
                    }
                },
            };
            if let Some((reason, message, backoff_reason)) = failure {
                self.update(kind, idx, |c| {
                    c.state = CState::Waiting {
                        reason: reason.into(),
                        message: Some(message.clone()),
                    }
                });
                self.event("Warning", "Failed", &format!("Error: {reason}: {message}"));
                if backoff_reason != reason {
                    if !self.pause_for(Duration::from_millis(200), sidecar).await {
                        return None;
                    }
                    self.update(kind, idx, |c| {
                        c.state = CState::Waiting {
                            reason: backoff_reason.into(),
                            message: Some(format!("Back-off pulling image {image:?}: {message}")),
                        }
                    });
                    self.event(
                        "Normal",
                        "BackOff",
                        &format!("Back-off pulling image {image:?}"),
                    );
                }
            }
            if !self.pause_for(backoff, sidecar).await {
                return None;
            }
            backoff = (backoff * 2).min(cfg.backoff_max);
        }
    }

    /// If the container is an HTTP function, serve it on the pod's address.
    async fn serve_function(
        &self,
        rt: &Arc<dyn ContainerRuntime>,
        id: &ContainerId,
        def: &Value,
    ) -> Option<tokio::task::JoinHandle<()>> {
        if !rt.is_http_function(id) {
            return None;
        }
        let ip: std::net::IpAddr = self.record().pod_ip.parse().ok()?;
        let port = super::functions::port_of(def);
        let addr = std::net::SocketAddr::new(ip, port);
        let local = super::functions::Local {
            runtime: rt.clone(),
            id: id.clone(),
        };
        let ns = self
            .sandbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|s| s.ns.clone());
        let served = match ns {
            None => self.agent.functions.serve(addr, local),
            // in a sandbox the function listens inside, on every address
            // there (the pod's localhost too); the forward of the pod's
            // address brings the node's requests in
            Some(ns) => ns
                .handle()
                .spawn(async move {
                    let l = std::net::TcpListener::bind(("0.0.0.0", port))?;
                    l.set_nonblocking(true)?;
                    Ok::<_, std::io::Error>(l)
                })
                .await
                .map_err(std::io::Error::other)
                .and_then(|l| l)
                .and_then(tokio::net::TcpListener::from_std)
                .and_then(|l| self.agent.functions.serve_on(addr, l, local)),
        };
        match served {
            Ok(task) => Some(task),
            Err(e) => {
                self.event(
                    "Warning",
                    "FailedToServe",
                    &format!("cannot serve the HTTP function on {addr}: {e}"),
                );
                None
            }
        }
    }

    fn record_of(&self, kind: Kind, idx: usize) -> ContainerRecord {
        let rec = self.record();
        match kind {
            Kind::Init => rec.init[idx].clone(),
            Kind::Main => rec.containers[idx].clone(),
        }
    }

    /// The grace period for stopping the pod's containers: the deletion's
    /// (`kubectl delete --grace-period`), else the pod's.
    fn grace(&self) -> Duration {
        let pod = self.pod();
        let secs = pod["metadata"]["deletionGracePeriodSeconds"]
            .as_u64()
            .or_else(|| pod["spec"]["terminationGracePeriodSeconds"].as_u64())
            .unwrap_or(30);
        Duration::from_secs(secs)
    }

    /// A started container: record Running, probe it, wait for its exit (or
    /// stop it), record it.
    async fn watch_container(
        &self,
        kind: Kind,
        idx: usize,
        rt: &Arc<dyn ContainerRuntime>,
        id: &ContainerId,
        name: &str,
        adopted: bool,
    ) -> Exit {
        let started = match rt.status(id).await {
            Ok(ContainerState::Running { started_at }) => started_at,
            _ => SystemTime::now(),
        };
        let def = self.pod()["spec"][kind.list()][idx].clone();
        let sidecar = kind == Kind::Init && is_sidecar(&def);
        let mut probes = Probes::default();
        if kind == Kind::Main {
            for (which, slot) in [
                ("startupProbe", &mut probes.startup),
                ("livenessProbe", &mut probes.liveness),
                ("readinessProbe", &mut probes.readiness),
            ] {
                match Probe::parse(&def, which) {
                    Ok(p) => *slot = p,
                    Err(e) => self.event("Warning", "Unhealthy", &format!("invalid probe: {e}")),
                }
            }
        }
        let hook = |which: &str| match probe::Hook::parse(&def, which) {
            Ok(h) => (h, None),
            Err(e) => (None, Some(e)),
        };
        let ((post_start, bad_post), (pre_stop, bad_pre)) = (hook("postStart"), hook("preStop"));
        for e in [bad_post, bad_pre].into_iter().flatten() {
            self.event(
                "Warning",
                "FailedHook",
                &format!("invalid lifecycle hook: {e}"),
            );
        }
        let pod_ip = self.record().pod_ip;
        let target = probe::Target {
            runtime: rt,
            id,
            pod_ip: &pod_ip,
            http: &self.agent.http,
        };
        // postStart runs before the container counts as Running (not
        // again for a container adopted after an agent restart); if it
        // fails, the container is killed and its restart policy decides
        let mut post_start_failed = None;
        if let (Some(h), false) = (&post_start, adopted) {
            if let Err(e) = probe::run_hook(h, &target, POST_START_LIMIT).await {
                self.event(
                    "Warning",
                    "FailedPostStartHook",
                    &format!("PostStartHook failed: {e}"),
                );
                post_start_failed = Some(e);
            }
        }
        self.update(kind, idx, |c| {
            c.state = CState::Running {
                started_at: ts(started),
            };
            c.container_id = format!("{}://{id}", rt.name());
            c.started = probes.startup.is_none();
            c.ready = c.started && probes.readiness.is_none();
        });
        // preStop runs within the grace period; what it leaves of it (at
        // least 2 s, the kubelet's one-time extension) goes to the signals
        let stop = |reason: String| {
            let pre_stop = pre_stop.clone();
            let target = &target;
            async move {
                self.event("Normal", "Killing", &reason);
                let grace = self.grace();
                let t0 = std::time::Instant::now();
                if let Some(h) = &pre_stop {
                    if let Err(e) = probe::run_hook(h, target, grace).await {
                        self.event(
                            "Warning",
                            "FailedPreStopHook",
                            &format!("PreStopHook failed: {e}"),
                        );
                    }
                }
                let left = grace
                    .checked_sub(t0.elapsed())
                    .filter(|d| !d.is_zero())
                    .unwrap_or(Duration::from_secs(2));
                let _ = rt.stop(id, left).await;
                rt.wait(id).await
            }
        };
        let exit = if let Some(e) = post_start_failed {
            let _ = rt.stop(id, Duration::ZERO).await;
            rt.wait(id).await.map(|mut x| {
                x.reason = "Error".into();
                x.message = Some(format!("PostStartHook failed: {e}"));
                x
            })
        } else {
            tokio::select! {
                exit = rt.wait(id) => exit,
                _ = stopped(self.halt(sidecar)) => {
                    stop(format!("Stopping container {name}")).await
                }
                failed = self.run_probes(idx, &probes, &target), if kind == Kind::Main => {
                    stop(format!("Container {name} failed {failed} probe, will be restarted")).await
                }
            }
        };
        let exit = exit.unwrap_or(Exit {
            exit_code: wasmkube_runtime::wasm::KILLED_EXIT_CODE,
            reason: "Error".into(),
            message: Some("container disappeared".into()),
            started_at: started,
            finished_at: SystemTime::now(),
        });
        let term = CState::Terminated {
            exit_code: exit.exit_code,
            reason: exit.reason.clone(),
            message: exit.message.clone(),
            started_at: ts(exit.started_at),
            finished_at: ts(exit.finished_at),
        };
        self.update(kind, idx, |c| {
            c.state = term;
            c.ready = false;
        });
        exit
    }

    /// Probe a running container: the startup probe until it succeeds, then
    /// liveness and readiness side by side. Returns only when the container
    /// must be restarted, naming the probe that failed.
    async fn run_probes(
        &self,
        idx: usize,
        probes: &Probes,
        target: &probe::Target<'_>,
    ) -> &'static str {
        /// One probe's loop; `on` gets every transition and says whether to stop.
        async fn each(
            ctx: &PodCtx,
            label: &str,
            p: &Probe,
            target: &probe::Target<'_>,
            mut on: impl FnMut(Transition) -> bool,
        ) {
            tokio::time::sleep(p.initial_delay).await;
            let mut tracker = Tracker::new(p);
            loop {
                let result = probe::check(p, target).await;
                if let Err(m) = &result {
                    ctx.event(
                        "Warning",
                        "Unhealthy",
                        &format!("{label} probe failed: {m}"),
                    );
                }
                if let Some(t) = tracker.observe(result.is_ok()) {
                    if on(t) {
                        return;
                    }
                }
                tokio::time::sleep(p.period).await;
            }
        }
        if let Some(p) = &probes.startup {
            let mut ok = false;
            each(self, "Startup", p, target, |t| {
                ok = t == Transition::Succeeded;
                true
            })
            .await;
            if !ok {
                return "startup";
            }
            let ready = probes.readiness.is_none();
            self.update(Kind::Main, idx, |c| {
                c.started = true;
                c.ready = ready;
            });
        }
        let liveness = async {
            match &probes.liveness {
                Some(p) => each(self, "Liveness", p, target, |t| t == Transition::Failed).await,
                None => std::future::pending().await,
            }
        };
        let readiness = async {
            match &probes.readiness {
                Some(p) => {
                    each(self, "Readiness", p, target, |t| {
                        self.update(Kind::Main, idx, |c| c.ready = t == Transition::Succeeded);
                        false
                    })
                    .await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = liveness => "liveness",
            _ = readiness => "readiness",
        }
    }

    /// Record the pod with `status` as its local state (atomically), in
    /// one trip to the blocking pool. Only the `first` record creates the
    /// pod's directory, so a late write cannot bring back one the end of
    /// the pod removed.
    async fn persist(&self, status: &Value, first: bool) {
        let pod = self.pod();
        if pod.is_null() {
            return;
        }
        let mut pod = Value::clone(&pod);
        pod["status"] = status.clone();
        let dir = spec::pod_dir(&self.agent.config.data_dir, &self.uid);
        let bytes = serde_json::to_vec(&pod).unwrap_or_default();
        let written = tokio::task::spawn_blocking(move || {
            if first {
                std::fs::create_dir_all(&dir)?;
            }
            let tmp = dir.join(format!("{LOCAL_STATE}.tmp"));
            std::fs::write(&tmp, &bytes)?;
            std::fs::rename(&tmp, dir.join(LOCAL_STATE))
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(e) = written {
            tracing::warn!(pod = %self.name, error = %e, "saving local pod state");
        }
    }

    /// Push the status whenever it changes, until the pod is gone.
    async fn sync_status(self: Arc<Self>) {
        // the last status reported, as its JSON text: a parsed status held
        // by every idle pod's worker took 7 KB
        let mut last = Vec::new();
        let mut written: Option<std::time::Instant> = None;
        loop {
            self.dirty.notified().await;
            if let Some(at) = written {
                tokio::time::sleep(STATUS_COALESCE.saturating_sub(at.elapsed())).await;
            }
            let pod = self.pod();
            if pod.is_null() {
                return;
            }
            let rp = pod["spec"]["restartPolicy"].as_str().unwrap_or("Always");
            let status = status::pod_status(&self.record(), rp, &pod["status"], &meta::now());
            let text = serde_json::to_vec(&status).unwrap_or_default();
            if text == last {
                continue;
            }
            let path = format!(
                "/api/v1/namespaces/{}/pods/{}/status",
                self.namespace, self.name
            );
            // the local record and the report, side by side
            let patch = json!({"status": status});
            let (_, reported) = tokio::join!(
                self.persist(&status, false),
                self.agent.client.request_as(
                    Method::PATCH,
                    &path,
                    Some(&patch),
                    "application/merge-patch+json",
                )
            );
            match reported {
                Ok(_) => {
                    last = text;
                    written = Some(std::time::Instant::now());
                }
                Err(e) if e.is_not_found() => return,
                Err(e) => {
                    tracing::debug!(error = %e, pod = %self.name, "status update");
                    // keep the change pending; retry shortly
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    self.dirty.notify_one();
                }
            }
        }
    }
}

/// How long a postStart hook may run.
const POST_START_LIMIT: Duration = Duration::from_secs(120);

/// A native sidecar: an init container with `restartPolicy: Always`.
fn is_sidecar(container: &Value) -> bool {
    container["restartPolicy"].as_str() == Some("Always")
}

/// Resolves once the pod is being stopped.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

/// Run a pod until it is deleted. `pod` carries its latest object (None once removed).
pub async fn run(agent: Arc<Agent>, pod_rx: watch::Receiver<Option<Arc<Value>>>) {
    let pod = pod_rx.borrow().clone().unwrap_or_default();
    let prev_ip = pod["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let ip = {
        let mut gone = pod_rx.clone();
        let ip = async {
            if prev_ip.is_empty() {
                agent.allocate_ip().await
            } else {
                agent.claim_ip(&prev_ip).await
            }
        };
        tokio::select! {
            ip = ip => ip,
            // deleted while waiting for the node's pod range
            _ = gone.wait_for(|p| p.is_none()) => return,
        }
    };
    let rec = resumed_record(&pod, ip);
    let resumed = rec
        .containers
        .iter()
        .chain(rec.init.iter())
        .any(|c| !c.container_id.is_empty())
        .then(std::time::Instant::now);
    let rec = PodRecord {
        host_ip: agent.config.advertise_ip.clone(),
        start_time: if rec.start_time.is_empty() {
            meta::now()
        } else {
            rec.start_time
        },
        ..rec
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let (sidecars_stop_tx, sidecars_stop_rx) = watch::channel(false);
    let ctx = Arc::new(PodCtx {
        agent: agent.clone(),
        uid: pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        namespace: meta::namespace(&pod).to_string(),
        name: meta::name(&pod).to_string(),
        pod: pod_rx.clone(),
        rec: Mutex::new(rec),
        dirty: Notify::new(),
        stop: stop_rx,
        sidecars_stop: sidecars_stop_rx,
        sandbox: Mutex::default(),
        data: Mutex::default(),
        resumed,
    });
    // Deletion (a deletionTimestamp, or the object gone) stops the pod.
    let mut watcher = pod_rx.clone();
    tokio::spawn(async move {
        let _ = watcher
            .wait_for(|p| p.as_ref().is_none_or(|p| meta::is_deleting(p)))
            .await;
        let _ = stop_tx.send(true);
    });
    agent.register_pod(&ctx.namespace, &ctx.name, ctx.clone());
    {
        // container changes report sooner; this reports a slow start
        let ctx = ctx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(FIRST_STATUS).await;
            ctx.dirty.notify_one();
        });
    }
    // the first local record is written while the pod's ConfigMaps and
    // Secrets are fetched, and before any status record can follow it
    // (the steps of a start and an end are boxed: this future lives as
    // long as the pod, and is as big as the largest step awaited inline)
    let (_, data) =
        Box::pin(async { tokio::join!(ctx.persist(&pod["status"], true), ctx.lookup_data()) })
            .await;
    // later versions come from the channel; this one is not kept
    drop(pod);
    let status_task = tokio::spawn(ctx.clone().sync_status());

    let prepared = match Box::pin(ctx.prepare_sandbox()).await {
        Ok(()) => Box::pin(ctx.prepare_volumes(&data)).await,
        Err(e) => Err(e),
    };
    match prepared {
        Err(message) => {
            for i in 0..ctx.record().containers.len() {
                ctx.update(Kind::Main, i, |c| {
                    c.state = CState::Waiting {
                        reason: "CreateContainerConfigError".into(),
                        message: Some(message.clone()),
                    }
                });
            }
            ctx.event("Warning", "FailedMount", &message);
        }
        Ok(volumes) => {
            let mut init_ok = true;
            let mut sidecars = Vec::new();
            for i in 0..ctx.record().init.len() {
                if is_sidecar(&ctx.pod()["spec"]["initContainers"][i]) {
                    // runs beside the rest; the next starts once it has started
                    let task = {
                        let (ctx, volumes) = (ctx.clone(), volumes.clone());
                        tokio::spawn(async move { ctx.supervise(Kind::Init, i, &volumes).await })
                    };
                    while !ctx.record().init[i].started && !ctx.stopping() && !task.is_finished() {
                        ctx.pause(Duration::from_millis(50)).await;
                    }
                    sidecars.push(task);
                    if ctx.stopping() {
                        init_ok = false;
                        break;
                    }
                    continue;
                }
                match Box::pin(ctx.supervise(Kind::Init, i, &volumes)).await {
                    Some(exit) if exit.exit_code == 0 => {}
                    Some(_) => {
                        ctx.rec
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .init_failed = true;
                        ctx.dirty.notify_one();
                        init_ok = false;
                        break;
                    }
                    None => {
                        init_ok = false;
                        break;
                    }
                }
            }
            if init_ok && !ctx.stopping() {
                ctx.rec
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .initialized = true;
                // without init containers the containers' start (or the
                // first-status timer) reports it a moment later
                if !ctx.record().init.is_empty() {
                    ctx.dirty.notify_one();
                }
                let n = ctx.record().containers.len();
                let workers: Vec<_> = (0..n)
                    .map(|i| {
                        let ctx = ctx.clone();
                        let volumes = volumes.clone();
                        tokio::spawn(async move { ctx.supervise(Kind::Main, i, &volumes).await })
                    })
                    .collect();
                for w in workers {
                    let _ = w.await;
                }
            }
            // the sidecars outlive the containers they serve, then stop
            let _ = sidecars_stop_tx.send(true);
            for s in sidecars {
                let _ = s.await;
            }
        }
    }
    // Done running: wait for deletion, then finish it.
    stopped(ctx.stop.clone()).await;
    Box::pin(ctx.release_sandbox()).await;
    ctx.dirty.notify_one();
    tokio::time::sleep(Duration::from_millis(50)).await;
    status_task.abort();
    if pod_rx.borrow().is_some() {
        let path = format!("/api/v1/namespaces/{}/pods/{}", ctx.namespace, ctx.name);
        let body = json!({"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0, "preconditions": {"uid": ctx.uid}});
        if let Err(e) = Box::pin(agent.client.request(Method::DELETE, &path, Some(&body))).await {
            if !e.is_not_found() {
                tracing::warn!(error = %e, pod = %ctx.name, "removing deleted pod");
            }
        }
    }
    agent.unregister_pod(&ctx.namespace, &ctx.name, &ctx.uid);
    // its images may be garbage now
    Box::pin(agent.collect_images()).await;
    agent.release_ip(&ctx.record().pod_ip);
    let _ = tokio::fs::remove_dir_all(spec::pod_dir(&agent.config.data_dir, &ctx.uid)).await;
}

/// The record a worker starts from, with the address the agent gave it. A
/// pod this node ran before (the agent restarted) keeps its start time and
/// restart counts; a container that was running died with the agent's
/// process, so its count goes up and its last state says why.
fn resumed_record(pod: &Value, pod_ip: String) -> PodRecord {
    let status = &pod["status"];
    let list = |k: &str, statuses: &str| -> Vec<ContainerRecord> {
        pod["spec"][k]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let name = c["name"].as_str().unwrap_or_default();
                let mut rec = ContainerRecord::new(name, c["image"].as_str().unwrap_or_default());
                let prev = status[statuses]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|s| s["name"] == name);
                if let Some(prev) = prev {
                    let count = prev["restartCount"].as_u64().unwrap_or(0) as u32;
                    let running = &prev["state"]["running"];
                    let linux = prev["containerID"]
                        .as_str()
                        .is_some_and(|id| id.starts_with("oci://"));
                    if running.is_object() && linux {
                        // still running under its shim: adopted, not restarted
                        rec.restart_count = count;
                        rec.container_id = prev["containerID"].as_str().unwrap_or_default().into();
                    } else if running.is_object() {
                        rec.restart_count = count + 1;
                        rec.last_state = Some(CState::Terminated {
                            exit_code: wasmkube_runtime::wasm::KILLED_EXIT_CODE,
                            reason: "Unknown".into(),
                            message: Some("the node agent restarted".into()),
                            started_at: running["startedAt"].as_str().unwrap_or_default().into(),
                            finished_at: ts(SystemTime::now()),
                        });
                    } else {
                        rec.restart_count = count;
                    }
                }
                rec
            })
            .collect()
    };
    let init = list("initContainers", "initContainerStatuses");
    PodRecord {
        initialized: init.is_empty(),
        init,
        containers: list("containers", "containerStatuses"),
        init_failed: false,
        pod_ip,
        host_ip: String::new(),
        start_time: status["startTime"].as_str().unwrap_or_default().to_string(),
    }
}

/// The directories and files a pod's volumes need, written together by
/// one blocking task: each `tokio::fs` call is a round trip to the
/// blocking pool, and a start used to make about fifteen of them. Each
/// file is replaced atomically: a reader sees the old content or the
/// new, never half.
#[derive(Default)]
struct Writes {
    dirs: Vec<PathBuf>,
    /// Written beside, then renamed over.
    files: Vec<(PathBuf, Vec<u8>)>,
}

impl Writes {
    fn dir(&mut self, dir: &Path) {
        self.dirs.push(dir.to_path_buf());
    }

    /// Write `value` to `path` inside `dir` (volume `volume`'s), which
    /// must stay inside it.
    fn file(&mut self, dir: &Path, volume: &str, path: &str, value: Vec<u8>) -> Result<(), String> {
        if path.contains("..") || path.starts_with('/') {
            return Err(format!(
                "volume {volume}: path {path:?} must be relative and not contain '..'"
            ));
        }
        self.files.push((dir.join(path), value));
        Ok(())
    }

    async fn apply(self) -> Result<(), String> {
        if self.dirs.is_empty() && self.files.is_empty() {
            return Ok(());
        }
        tokio::task::spawn_blocking(move || self.apply_now())
            .await
            .map_err(|e| format!("writing volumes: {e}"))?
    }

    fn apply_now(&self) -> Result<(), String> {
        for dir in &self.dirs {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        for (file, value) in &self.files {
            if let Some(parent) = file.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            let tmp = file.with_extension("wk-tmp");
            std::fs::write(&tmp, value).map_err(|e| format!("{}: {e}", tmp.display()))?;
            std::fs::rename(&tmp, file).map_err(|e| format!("{}: {e}", file.display()))?;
        }
        Ok(())
    }
}

/// Project a ConfigMap or Secret (`src` is its volume source) into `dir`.
fn write_source(
    writes: &mut Writes,
    dir: &Path,
    volume: &str,
    src: &Value,
    source: &str,
    is_cm: bool,
    data: &Data,
) -> Result<(), String> {
    let items = if is_cm {
        data.configmaps.get(source)
    } else {
        data.secrets.get(source)
    };
    let items = match items {
        Some(i) => i.clone(),
        None if src["optional"].as_bool().unwrap_or(false) => BTreeMap::new(),
        // no control plane: what an earlier run of this agent projected stays
        None if data.offline && dir.exists() => return Ok(()),
        None => {
            return Err(format!(
                "{} {source:?} not found",
                if is_cm { "configmap" } else { "secret" }
            ))
        }
    };
    writes.dir(dir);
    let wanted: Vec<(String, String)> = match src["items"].as_array() {
        Some(sel) => sel
            .iter()
            .filter_map(|i| {
                Some((
                    i["key"].as_str()?.to_string(),
                    i["path"].as_str()?.to_string(),
                ))
            })
            .collect(),
        None => items.keys().map(|k| (k.clone(), k.clone())).collect(),
    };
    for (key, path) in wanted {
        let value = items.get(&key).cloned().unwrap_or_default();
        writes.file(dir, volume, &path, value.into_bytes())?;
    }
    Ok(())
}

/// Ask for a token; returns it and how long it lives.
async fn request_token(
    client: &crate::client::Client,
    url: &str,
    request: &Value,
    volume: &str,
) -> Result<(String, Duration), String> {
    let resp = client
        .request(Method::POST, url, Some(request))
        .await
        .map_err(|e| format!("volume {volume}: requesting a ServiceAccount token: {e}"))?;
    let token = resp["status"]["token"]
        .as_str()
        .ok_or_else(|| format!("volume {volume}: the token request returned no token"))?;
    let token = token.to_string();
    let expires = resp["status"]["expirationTimestamp"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| (t.timestamp() - chrono::Utc::now().timestamp()).max(60) as u64)
        .unwrap_or(3600);
    Ok((token, Duration::from_secs(expires)))
}

/// Renew a projected token when 80% of its life has passed (as the
/// kubelet does), until the pod stops.
#[allow(clippy::too_many_arguments)]
async fn refresh_token(
    client: crate::client::Client,
    url: String,
    request: Value,
    dir: PathBuf,
    volume: String,
    path: String,
    mut lifetime: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let wait = lifetime.mul_f64(0.8);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let written = async {
            let (token, lifetime) = request_token(&client, &url, &request, &volume).await?;
            let mut writes = Writes::default();
            writes.file(&dir, &volume, &path, token.into_bytes())?;
            writes.apply().await?;
            Ok::<_, String>(lifetime)
        }
        .await;
        match written {
            Ok(l) => lifetime = l,
            Err(e) => {
                tracing::warn!(error = %e, "refreshing a projected token");
                // try again soon, before the old one expires
                lifetime = Duration::from_secs(30);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_pod_keeps_its_address_and_counts_the_lost_run_as_a_restart() {
        let fresh = serde_json::json!({"spec": {"containers": [{"name": "a", "image": "i"}]}});
        let rec = resumed_record(&fresh, "127.64.0.2".into());
        assert_eq!(rec.pod_ip, "127.64.0.2");
        assert_eq!(rec.containers[0].restart_count, 0);
        assert!(rec.containers[0].last_state.is_none());
        assert_eq!(rec.start_time, "");

        let resumed = serde_json::json!({
        "spec": {"containers": [{"name": "a", "image": "i"}, {"name": "b", "image": "i"}]},
        "status": {"podIP": "127.64.0.9", "startTime": "2026-01-01T00:00:00Z", "containerStatuses": [
            {"name": "a", "restartCount": 2, "state": {"running": {"startedAt": "2026-01-01T00:00:05Z"}}},
            {"name": "b", "restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff"}}},
        ]}});
        let rec = resumed_record(&resumed, "127.64.0.9".into());
        assert_eq!(rec.pod_ip, "127.64.0.9");
        assert_eq!(rec.start_time, "2026-01-01T00:00:00Z");
        assert_eq!(rec.containers[0].restart_count, 3);
        match &rec.containers[0].last_state {
            Some(CState::Terminated {
                reason, started_at, ..
            }) => {
                assert_eq!(reason, "Unknown");
                assert_eq!(started_at, "2026-01-01T00:00:05Z");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(rec.containers[1].restart_count, 4);
        assert!(rec.containers[1].last_state.is_none());
    }
}
