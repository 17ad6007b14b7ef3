//! Node runtime for wasmkube: runs pod containers.
//!
//! One object-safe trait, [`ContainerRuntime`], modelled on the kubelet's
//! container runtime interface: create, start, stop with a grace period,
//! remove, status, wait, exec. The agent picks a runtime per container with
//! [`ContainerRuntime::supports`], so one pod can mix runtimes.
//!
//! # Layout
//! - [`wasm`]: Wasm containers in-process under wasmtime (WASI preview 1
//!   modules and preview 2 components), one shared engine per node.
//! - [`logs`]: per-container log files in the CRI format, with rotation.
//! - [`image`]: image references and module loading.
//! - [`oci`]: Linux containers through runc, with an OCI image store.
//! - [`sandbox`]: a pod's network namespace, shared by all its containers.
//!
//! This crate knows nothing of the control plane: the agent maps Kubernetes
//! pod specs to [`ContainerSpec`]s.

pub mod image;
pub mod logs;
pub mod oci;
pub mod sandbox;
pub mod wasm;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// Identifies one container instance (pod uid, container name, attempt).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerId(pub String);

impl std::fmt::Display for ContainerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A directory made visible to the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub host_path: PathBuf,
    pub guest_path: String,
    pub read_only: bool,
}

/// Everything needed to run one container.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub id: ContainerId,
    /// The image reference as written in the pod (`file:///...`, `registry/repo:tag`).
    pub image: String,
    /// argv, including argv[0].
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub mounts: Vec<Mount>,
    /// Memory limit in bytes (`resources.limits.memory`).
    pub memory_limit: Option<u64>,
    /// CPU limit in millicores (`resources.limits.cpu`).
    pub cpu_millis: Option<u64>,
    /// Where stdout and stderr go.
    pub log_path: PathBuf,
    /// `imagePullPolicy`.
    pub pull_policy: image::PullPolicy,
    /// Registry credentials from the pod's `imagePullSecrets`.
    pub pull_credentials: Option<image::Credentials>,
    /// The pod's address: the one specific address a guest may bind besides
    /// the unspecified one.
    pub pod_ip: Option<std::net::IpAddr>,
    /// Cluster names a guest's `wasi:sockets` name lookup answers before the
    /// node's resolver (Service and pod DNS names).
    pub name_lookup: Option<NameLookup>,
    /// Limits of an HTTP function (ignored for other guests).
    pub http: HttpLimits,
    /// The pod's network namespace (a pinned namespace file); `None`: the
    /// node's network (Wasm pods, `hostNetwork` pods).
    pub sandbox: Option<PathBuf>,
    /// What only Linux containers use.
    pub linux: LinuxOptions,
}

impl ContainerSpec {
    /// A spec with nothing but an id and an image (the rest empty or default).
    pub fn new(id: ContainerId, image: String) -> Self {
        Self {
            id,
            image,
            args: Vec::new(),
            env: Vec::new(),
            working_dir: None,
            mounts: Vec::new(),
            memory_limit: None,
            cpu_millis: None,
            log_path: PathBuf::new(),
            pull_policy: image::PullPolicy::default(),
            pull_credentials: None,
            pod_ip: None,
            name_lookup: None,
            http: HttpLimits::default(),
            sandbox: None,
            linux: LinuxOptions::default(),
        }
    }
}

/// A container's `securityContext` (merged with the pod's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Security {
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
    pub supplemental_groups: Vec<u32>,
    pub read_only_root: bool,
    pub privileged: bool,
    /// `None`: the default (allowed).
    pub allow_privilege_escalation: Option<bool>,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    /// `seccompProfile: {type: RuntimeDefault}`.
    pub seccomp_runtime_default: bool,
}

/// The parts of a container only Linux containers use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinuxOptions {
    /// `command` and `args` as the pod writes them: an image's Entrypoint
    /// and Cmd fill in what they leave out.
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub security: Security,
    /// `resources.requests.cpu` in millicores (CPU shares).
    pub cpu_request_millis: Option<u64>,
    /// The pod's cgroup (`/wasmkube/burstable/pod<uid>`).
    pub cgroup_parent: String,
    /// The container's hostname (the pod's name).
    pub hostname: String,
    /// The `/etc/resolv.conf` to give the container, if any.
    pub resolv_conf: Option<String>,
    /// `stdin: true`: the container's stdin stays open, fed by `attach`;
    /// with `stdin_once`, it ends when the first attach does.
    pub stdin: bool,
    pub stdin_once: bool,
    /// `tty: true`: the container's stdio is a terminal (input through
    /// `attach`).
    pub tty: bool,
}

/// How much an HTTP function may take on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Requests handled at once; more wait (up to `timeout`) for a slot.
    pub concurrency: usize,
    /// Longest a request may take, response body included.
    pub timeout: Duration,
    /// Largest request body accepted, in bytes.
    pub max_body: u64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            concurrency: 100,
            timeout: Duration::from_secs(30),
            max_body: 10 * 1024 * 1024,
        }
    }
}

/// A container's resource use and, for HTTP functions, its requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContainerUsage {
    /// CPU time running guest code since the start, in nanoseconds.
    pub cpu_nanos: u64,
    /// Linear memory held now, in bytes.
    pub memory_bytes: u64,
    /// Requests answered since the start (HTTP functions).
    pub requests: u64,
    /// Requests being handled now (HTTP functions).
    pub in_flight: u64,
}

/// A boxed error of an HTTP body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of requests to and responses from HTTP functions.
pub type HttpBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, BoxError>;

/// Resolves cluster names for guests: `Some(addresses)` for a cluster name
/// (empty: no such name), `None` for a name the node's resolver answers.
#[derive(Clone)]
pub struct NameLookup(pub std::sync::Arc<LookupFn>);

/// The function behind a [`NameLookup`].
pub type LookupFn = dyn Fn(&str) -> Option<Vec<std::net::IpAddr>> + Send + Sync;

impl std::fmt::Debug for NameLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NameLookup")
    }
}

/// The standard streams of an `exec`: stdin if the caller wires one, and
/// where stdout and stderr go.
pub struct ExecIo {
    /// The caller asked for a terminal (`kubectl exec -t`).
    pub tty: bool,
    /// The caller's terminal size, first and on every change (with `tty`).
    pub resize: Option<tokio::sync::mpsc::Receiver<TerminalSize>>,
    pub stdin: Option<Box<dyn tokio::io::AsyncRead + Send + Sync + Unpin>>,
    pub stdout: Box<dyn tokio::io::AsyncWrite + Send + Sync + Unpin>,
    pub stderr: Box<dyn tokio::io::AsyncWrite + Send + Sync + Unpin>,
}

/// An attached client's input (`kubectl attach -i`, `kubectl run -it`).
pub struct AttachInput {
    pub stdin: Box<dyn tokio::io::AsyncRead + Send + Sync + Unpin>,
    /// The client's terminal size, first and on every change.
    pub resize: Option<tokio::sync::mpsc::Receiver<TerminalSize>>,
}

/// A terminal's size in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalSize {
    pub width: u16,
    pub height: u16,
}

/// What `create` prepared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// The image's content digest (`imageID`).
    pub image_id: String,
}

/// Why a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub exit_code: i32,
    /// `Completed`, `Error`, `OOMKilled`, `Killed` ...
    pub reason: String,
    /// The trap message or other detail.
    pub message: Option<String>,
    pub started_at: SystemTime,
    pub finished_at: SystemTime,
}

/// Where a container is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running { started_at: SystemTime },
    Exited(Exit),
}

/// Errors from a runtime, named for the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The image could not be fetched or read (kubelet: ErrImagePull).
    #[error("failed to pull image {image:?}: {reason}")]
    Pull { image: String, reason: String },
    /// The module is not valid Wasm or does not fit (kubelet: CreateContainerError).
    /// `imagePullPolicy: Never` and the image is not on the node (kubelet: ErrImageNeverPull).
    #[error("container image {image:?} is not present with pull policy of Never")]
    NeverPull { image: String },
    #[error("failed to create container {id}: {reason}")]
    Create { id: ContainerId, reason: String },
    #[error("failed to start container {id}: {reason}")]
    Start { id: ContainerId, reason: String },
    #[error("container {0} not found")]
    NotFound(ContainerId),
    /// exec into a container that is not running.
    #[error("cannot exec in container {id}: {reason}")]
    Exec { id: ContainerId, reason: String },
    #[error("reading logs of {id}: {source}")]
    Logs {
        id: ContainerId,
        #[source]
        source: std::io::Error,
    },
}

/// A container runtime (object-safe; `Send + Sync`).
#[async_trait::async_trait]
pub trait ContainerRuntime: Send + Sync {
    /// A short name (`wasm`, `oci`), also advertised on the Node.
    fn name(&self) -> &'static str;
    /// Whether this runtime runs `spec`'s image.
    fn supports(&self, image: &str) -> bool;
    /// Fetch and prepare the image (compile, cache) and the container.
    async fn create(&self, spec: ContainerSpec) -> Result<Created, RuntimeError>;
    /// Start a created container.
    async fn start(&self, id: &ContainerId) -> Result<(), RuntimeError>;
    /// Ask the container to stop, and force it after `grace`.
    async fn stop(&self, id: &ContainerId, grace: Duration) -> Result<(), RuntimeError>;
    /// Forget a stopped container (its log file stays until the pod goes).
    async fn remove(&self, id: &ContainerId) -> Result<(), RuntimeError>;
    /// The container's state.
    async fn status(&self, id: &ContainerId) -> Result<ContainerState, RuntimeError>;
    /// Wait until the container has exited.
    async fn wait(&self, id: &ContainerId) -> Result<Exit, RuntimeError>;
    /// Run `command` in the context of a running container (kubelet: exec).
    /// Dropping the future ends the command.
    async fn exec(
        &self,
        id: &ContainerId,
        command: Vec<String>,
        io: ExecIo,
    ) -> Result<Exit, RuntimeError>;
    /// Feed an attached client's input to a running container whose stdin
    /// is open (`stdin: true`), until the input ends. A runtime whose
    /// containers' stdin cannot be reopened drops it.
    async fn attach_input(
        &self,
        _id: &ContainerId,
        _input: AttachInput,
    ) -> Result<(), RuntimeError> {
        Ok(())
    }
    /// What the container uses now (None: unknown container).
    fn usage(&self, _id: &ContainerId) -> Option<ContainerUsage> {
        None
    }
    /// Whether the container is an HTTP function (served per request with
    /// [`ContainerRuntime::serve_http`], not run as a process).
    fn is_http_function(&self, _id: &ContainerId) -> bool {
        false
    }
    /// Serve one request with an HTTP function. Problems of the function
    /// (trap, timeout, limits) are answered as HTTP errors; `Err` only when
    /// there is no such running function.
    async fn serve_http(
        &self,
        id: &ContainerId,
        _req: http::Request<HttpBody>,
    ) -> Result<http::Response<HttpBody>, RuntimeError> {
        Err(RuntimeError::NotFound(id.clone()))
    }
}

#[cfg(test)]
mod wit_tests {
    /// The repository's `wit/` resolves: our package, its worlds, and the
    /// vendored WASI packages they include.
    #[test]
    fn the_wit_worlds_resolve() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
        let mut resolve = wit_parser::Resolve::default();
        let (pkg, _) = resolve.push_dir(&dir).expect("wit/ parses and resolves");
        let worlds: Vec<&str> = resolve.packages[pkg]
            .worlds
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            worlds,
            vec![
                "command",
                "http-function",
                "configured-command",
                "graceful-command",
                "guest-imports"
            ]
        );
        let command = resolve.packages[pkg].worlds["command"];
        let exports: Vec<String> = resolve.worlds[command]
            .exports
            .keys()
            .map(|k| resolve.name_world_key(k))
            .collect();
        assert!(
            exports.contains(&"wasi:cli/run@0.2.12".to_string()),
            "{exports:?}"
        );
        let http = resolve.packages[pkg].worlds["http-function"];
        let exports: Vec<String> = resolve.worlds[http]
            .exports
            .keys()
            .map(|k| resolve.name_world_key(k))
            .collect();
        assert!(
            exports.contains(&"wasi:http/incoming-handler@0.2.12".to_string()),
            "{exports:?}"
        );
    }
}
