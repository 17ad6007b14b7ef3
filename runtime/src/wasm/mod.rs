//! Wasm containers under wasmtime, in-process.
//!
//! - One [`Engine`] per node: async support, epoch interruption driven by one
//!   ticker thread, the pooling instance allocator (falling back to on-demand
//!   allocation where its reservations cannot be made), copy-on-write memory
//!   images.
//! - Compiled artifacts are cached on disk under `sha256-<digest>-<engine
//!   compatibility hash>.cwasm` and in memory, so a restart or a second pod
//!   with the same module skips compilation.
//! - Tiered compilation: a module never seen before is compiled first by
//!   Winch, wasmtime's baseline compiler (several times faster to compile,
//!   slower code), so its first pod starts at once; Cranelift compiles it
//!   again in the background, one module at a time, and pods started after
//!   that (and the disk cache) get the optimised code. A guest keeps the
//!   code it started with. Modules Winch cannot compile (tail calls, GC,
//!   exceptions) wait for Cranelift.
//! - WASI preview 1 core modules run `_start`; preview 2 components run
//!   `wasi:cli/run`. Components exporting `wasi:http/incoming-handler` are
//!   recognised (served by the agent's HTTP function support).
//! - `memory_limit` caps the sum of a store's linear memories (growing past it
//!   traps; the exit says `OOMKilled`); `cpu_millis` is enforced per 100 ms
//!   period from the epoch callback, which also yields on every tick so a
//!   busy guest cannot starve others.

mod http;
mod limits;
mod outgoing;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use wasmtime::component::{Component, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, Module, PoolingAllocationConfig, Store,
};
use wasmtime_wasi::cli::{AsyncStdinStream, AsyncStdoutStream, IsTerminal, StdoutStream};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_config::{WasiConfig, WasiConfigVariables};

use crate::image::{self, ImageRef};
use crate::logs::{self, LogSink, Stream};
use crate::{
    ContainerId, ContainerRuntime, ContainerSpec, ContainerState, Created, ExecIo, Exit,
    RuntimeError,
};

pub use limits::Usage;
use limits::{CpuThrottle, MemoryLimiter};

/// How often the epoch ticks (the granularity of yields, CPU accounting and stops).
pub const TICK: Duration = Duration::from_millis(5);

/// Exit code of a guest that trapped.
pub const TRAP_EXIT_CODE: i32 = 134;
/// Exit code of a guest stopped by the runtime or over its memory limit.
pub const KILLED_EXIT_CODE: i32 = 137;

/// Node-level Wasm settings.
#[derive(Debug, Clone)]
pub struct WasmConfig {
    /// Where compiled artifacts are cached.
    pub cache_dir: PathBuf,
    /// Where pulled images are stored.
    pub image_dir: PathBuf,
    /// Instance slots of the pooling allocator (`None`: on-demand allocation).
    pub pooling_instances: Option<u32>,
    /// CA certificates (DER) that guests' outbound HTTPS trusts besides the
    /// public roots: the cluster's server CA, so functions can call the API.
    pub extra_roots: Vec<Vec<u8>>,
    /// Start new modules on Winch code while Cranelift compiles them in the
    /// background (x86-64 only; elsewhere every module waits for Cranelift).
    pub baseline_compiler: bool,
}

/// A compiled image.
#[derive(Clone)]
pub enum Compiled {
    Module(Module),
    Component(Component),
}

impl Compiled {
    /// The engine that compiled it, which its stores must use: the node's
    /// Cranelift engine, or its Winch engine for baseline code.
    pub fn engine(&self) -> &Engine {
        match self {
            Compiled::Module(m) => m.engine(),
            Compiled::Component(c) => c.engine(),
        }
    }

    /// Whether the guest imports `wasmkube:pod/lifecycle` (and so can be
    /// asked to shut down).
    pub fn imports_lifecycle(&self) -> bool {
        match self {
            Compiled::Module(m) => m.imports().any(|i| i.module() == LIFECYCLE),
            Compiled::Component(c) => c
                .component_type()
                .imports(c.engine())
                .any(|(name, _)| name == LIFECYCLE),
        }
    }

    /// Whether this is a component exporting `wasi:http/incoming-handler`.
    pub fn is_http_handler(&self) -> bool {
        match self {
            Compiled::Module(_) => false,
            Compiled::Component(c) => c
                .component_type()
                .exports(c.engine())
                .any(|(name, _)| name.starts_with("wasi:http/incoming-handler")),
        }
    }

    fn compile(engine: &Engine, bytes: &[u8], component: bool) -> wasmtime::Result<Self> {
        Ok(if component {
            Compiled::Component(Component::new(engine, bytes)?)
        } else {
            Compiled::Module(Module::new(engine, bytes)?)
        })
    }

    fn serialize(&self) -> wasmtime::Result<Vec<u8>> {
        match self {
            Compiled::Module(m) => m.serialize(),
            Compiled::Component(c) => c.serialize(),
        }
    }
}

struct Container {
    spec: ContainerSpec,
    compiled: Compiled,
    state: watch::Sender<ContainerState>,
    /// Interrupt the guest.
    stop: Arc<Kill>,
    /// Ask the guest to finish (`wasmkube:pod/lifecycle`).
    shutdown: Arc<AtomicBool>,
    /// Whether the guest imports the lifecycle interface, so can hear the ask.
    listens: bool,
    /// An HTTP function's pre-instantiated component and request limits.
    function: Option<Arc<http::Function>>,
    /// CPU and memory of all its instances.
    usage: Arc<Usage>,
    /// The pod's network namespace, where its guest runs (sandboxed pods).
    netns: Option<Arc<crate::sandbox::NetnsRuntime>>,
}

struct Inner {
    engine: Engine,
    /// Winch: the first code of a module never seen before.
    baseline: Option<Engine>,
    /// Cranelift recompiles of baseline modules, one at a time (an edge
    /// node's cores are for its pods), and how many are pending.
    tier_up: tokio::sync::Semaphore,
    tiering: watch::Sender<usize>,
    cache_dir: PathBuf,
    /// Engine compatibility hash, part of every cache file name.
    compat: String,
    compiled: Mutex<HashMap<String, Compiled>>,
    /// One lock per digest being compiled: pods of one new image started
    /// together wait for a single compilation (one copy of the code and
    /// of its memory image) instead of each compiling their own.
    compiling: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    containers: Mutex<HashMap<ContainerId, Arc<Container>>>,
    ticker_stop: Arc<AtomicBool>,
    /// Pulled registry images.
    images: crate::image::ImageStore,
    /// How images were prepared: compiled now, or loaded from the disk cache.
    stats: CompileStats,
    /// Guests' outbound HTTPS trust.
    outgoing_tls: Arc<rustls::ClientConfig>,
    /// Threads in pods' network namespaces, shared by a pod's guests.
    netns: Mutex<HashMap<PathBuf, std::sync::Weak<crate::sandbox::NetnsRuntime>>>,
}

/// Counters of how compiled artifacts were obtained.
#[derive(Debug, Default)]
pub struct CompileStats {
    /// Cranelift compiles (first compiles and tier-ups).
    pub compiled: std::sync::atomic::AtomicU64,
    pub loaded_from_disk: std::sync::atomic::AtomicU64,
    /// Winch compiles.
    pub baseline: std::sync::atomic::AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// The Wasm runtime (cheap to clone).
#[derive(Clone)]
pub struct WasmRuntime {
    inner: Arc<Inner>,
}

fn engine_config(pooling: Option<u32>) -> Config {
    let mut c = Config::new();
    c.strategy(wasmtime::Strategy::Cranelift);
    c.epoch_interruption(true);
    c.memory_init_cow(true);
    if let Some(n) = pooling {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_core_instances(n * 4)
            .total_component_instances(n)
            .total_memories(n * 2)
            .total_tables(n * 4)
            .total_stacks(n);
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    c
}

/// Compile with Cranelift and write the artifact to the disk cache at `path`.
fn optimize(
    inner: &Inner,
    bytes: &[u8],
    component: bool,
    path: &std::path::Path,
) -> Result<Compiled, String> {
    let compiled =
        Compiled::compile(&inner.engine, bytes, component).map_err(|e| format!("{e:#}"))?;
    let artifact = compiled.serialize().map_err(|e| format!("{e:#}"))?;
    inner.stats.compiled.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, &artifact)
        .and_then(|_| std::fs::rename(&tmp, path))
        .is_err()
    {
        tracing::warn!(path = %path.display(), "could not write the compile cache");
    }
    Ok(compiled)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What kind of binary `bytes` is, from its header.
fn is_component(bytes: &[u8]) -> Option<bool> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return None;
    }
    Some(bytes[6..8] == [1, 0])
}

impl WasmRuntime {
    /// Create the node's engine and start its epoch ticker.
    pub fn new(config: WasmConfig) -> Result<Self, RuntimeError> {
        let err = |reason: String| RuntimeError::Create {
            id: ContainerId("engine".into()),
            reason,
        };
        let engine = match Engine::new(&engine_config(config.pooling_instances)) {
            Ok(e) => e,
            Err(e) if config.pooling_instances.is_some() => {
                tracing::warn!(error = %e, "pooling allocator unavailable; using on-demand allocation");
                Engine::new(&engine_config(None)).map_err(|e| err(e.to_string()))?
            }
            Err(e) => return Err(err(e.to_string())),
        };
        let baseline = if config.baseline_compiler && cfg!(target_arch = "x86_64") {
            // no pool: baseline code serves a module's first pods only
            let mut c = engine_config(None);
            c.strategy(wasmtime::Strategy::Winch);
            match Engine::new(&c) {
                Ok(e) => Some(e),
                Err(e) => {
                    tracing::warn!(error = %e, "Winch unavailable; new modules wait for Cranelift");
                    None
                }
            }
        } else {
            None
        };
        std::fs::create_dir_all(&config.cache_dir)
            .map_err(|e| err(format!("cache dir {}: {e}", config.cache_dir.display())))?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let ticker_stop = Arc::new(AtomicBool::new(false));
        {
            let engines: Vec<_> = std::iter::once(&engine)
                .chain(&baseline)
                .map(Engine::weak)
                .collect();
            let stop = ticker_stop.clone();
            std::thread::Builder::new()
                .name("wasm-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(TICK);
                        for engine in &engines {
                            match engine.upgrade() {
                                Some(e) => e.increment_epoch(),
                                None => return,
                            }
                        }
                    }
                })
                .map_err(|e| err(format!("epoch ticker: {e}")))?;
        }
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                baseline,
                tier_up: tokio::sync::Semaphore::new(1),
                tiering: watch::Sender::new(0),
                cache_dir: config.cache_dir,
                compat: format!("{:016x}", h.finish()),
                compiled: Mutex::default(),
                compiling: Mutex::default(),
                containers: Mutex::default(),
                ticker_stop,
                images: crate::image::ImageStore::new(config.image_dir),
                stats: CompileStats::default(),
                outgoing_tls: outgoing::client_config(&config.extra_roots),
                netns: Mutex::default(),
            }),
        })
    }

    /// The shared engine.
    /// The thread in the network namespace at `path`, started for the
    /// first guest of a pod and ended with the last.
    fn netns(&self, path: &std::path::Path) -> std::io::Result<Arc<crate::sandbox::NetnsRuntime>> {
        let mut map = lock(&self.inner.netns);
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(rt) = map.get(path).and_then(|w| w.upgrade()) {
            return Ok(rt);
        }
        let rt = Arc::new(crate::sandbox::NetnsRuntime::start(path)?);
        map.insert(path.to_path_buf(), Arc::downgrade(&rt));
        Ok(rt)
    }

    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// How many artifacts Cranelift compiled, and how many were loaded from
    /// the disk cache.
    pub fn compile_stats(&self) -> (u64, u64) {
        (
            self.inner.stats.compiled.load(Ordering::Relaxed),
            self.inner.stats.loaded_from_disk.load(Ordering::Relaxed),
        )
    }

    /// How many modules Winch compiled (started on baseline code).
    pub fn baseline_compiles(&self) -> u64 {
        self.inner.stats.baseline.load(Ordering::Relaxed)
    }

    /// Wait until no Cranelift recompile is pending.
    pub async fn tiered_up(&self) {
        let mut rx = self.inner.tiering.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Compile `bytes` (or load them from the caches).
    pub async fn compile(&self, bytes: Vec<u8>, digest: &str) -> Result<Compiled, String> {
        if let Some(c) = lock(&self.inner.compiled).get(digest) {
            return Ok(c.clone());
        }
        let gate = lock(&self.inner.compiling)
            .entry(digest.to_string())
            .or_default()
            .clone();
        let _compiling = gate.lock().await;
        let result = self.compile_once(bytes, digest).await;
        // the last one through removes the gate (a failed compile leaves
        // nothing behind; the next pod tries again)
        let mut gates = lock(&self.inner.compiling);
        if Arc::strong_count(&gate) == 2 {
            gates.remove(digest);
        }
        result
    }

    fn cache_path(&self, digest: &str) -> PathBuf {
        self.inner.cache_dir.join(format!(
            "{}-{}.cwasm",
            digest.replace(':', "-"),
            self.inner.compat
        ))
    }

    async fn compile_once(&self, bytes: Vec<u8>, digest: &str) -> Result<Compiled, String> {
        if let Some(c) = lock(&self.inner.compiled).get(digest) {
            return Ok(c.clone());
        }
        let component = is_component(&bytes)
            .ok_or_else(|| "not a WebAssembly binary (bad magic number)".to_string())?;
        let inner = self.inner.clone();
        let path = self.cache_path(digest);
        // baseline code comes back with the bytes, for Cranelift
        let (compiled, baseline) = tokio::task::spawn_blocking(move || {
            if path.exists() {
                // SAFETY: the file was written by `serialize` of this same engine
                // configuration (its compatibility hash is in the name) into the
                // node's private cache directory.
                let loaded = unsafe {
                    if component {
                        Component::deserialize_file(&inner.engine, &path).map(Compiled::Component)
                    } else {
                        Module::deserialize_file(&inner.engine, &path).map(Compiled::Module)
                    }
                };
                match loaded {
                    Ok(c) => {
                        inner.stats.loaded_from_disk.fetch_add(1, Ordering::Relaxed);
                        return Ok((c, None));
                    }
                    Err(e) => tracing::warn!(path = %path.display(), error = %e, "discarding unusable cache entry"),
                }
            }
            if let Some(winch) = &inner.baseline {
                match Compiled::compile(winch, &bytes, component) {
                    Ok(c) => {
                        inner.stats.baseline.fetch_add(1, Ordering::Relaxed);
                        return Ok((c, Some(bytes)));
                    }
                    // Cranelift may still take it (or give the reason)
                    Err(e) => tracing::debug!(error = %format!("{e:#}"), "Winch declined the module"),
                }
            }
            optimize(&inner, &bytes, component, &path).map(|c| (c, None))
        })
        .await
        .map_err(|e| format!("compile task: {e}"))??;
        lock(&self.inner.compiled).insert(digest.to_string(), compiled.clone());
        if let Some(bytes) = baseline {
            self.tier_up(bytes, digest.to_string(), component);
        }
        Ok(compiled)
    }

    /// Recompile a baseline module with Cranelift in the background; later
    /// starts (and the disk cache) get the optimised code.
    fn tier_up(&self, bytes: Vec<u8>, digest: String, component: bool) {
        let inner = self.inner.clone();
        let path = self.cache_path(&digest);
        inner.tiering.send_modify(|n| *n += 1);
        tokio::spawn(async move {
            let permit = inner.tier_up.acquire().await;
            let task = inner.clone();
            let optimised =
                tokio::task::spawn_blocking(move || optimize(&task, &bytes, component, &path))
                    .await;
            drop(permit);
            match optimised {
                Ok(Ok(c)) => {
                    lock(&inner.compiled).insert(digest, c);
                }
                Ok(Err(e)) => {
                    tracing::warn!(%digest, error = %e, "Cranelift could not compile a module Winch compiled; it stays on baseline code")
                }
                Err(e) => tracing::warn!(%digest, error = %e, "tier-up task"),
            }
            inner.tiering.send_modify(|n| *n -= 1);
        });
    }

    fn container(&self, id: &ContainerId) -> Result<Arc<Container>, RuntimeError> {
        lock(&self.inner.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::NotFound(id.clone()))
    }
}

struct P1Host {
    wasi: WasiP1Ctx,
    memory: MemoryLimiter,
    shutdown: Arc<AtomicBool>,
}

/// What the runtime's own imports need from a component guest's store data.
trait GuestHost: WasiView + 'static {
    fn lookup(&self) -> Option<&crate::NameLookup>;
    fn shutdown_requested(&self) -> bool;
}

impl GuestHost for P2Host {
    fn lookup(&self) -> Option<&crate::NameLookup> {
        self.lookup.as_ref()
    }
    fn shutdown_requested(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }
}

/// Link what the runtime adds for component guests: cluster name lookup
/// and `wasmkube:pod/lifecycle`.
fn guest_imports<T: GuestHost>(
    linker: &mut wasmtime::component::Linker<T>,
) -> wasmtime::Result<()> {
    cluster_name_lookup(linker)?;
    linker.instance(LIFECYCLE)?.func_wrap(
        "shutdown-requested",
        |store: wasmtime::StoreContextMut<'_, T>, (): ()| Ok((store.data().shutdown_requested(),)),
    )?;
    Ok(())
}

struct P2Host {
    ctx: WasiCtx,
    table: ResourceTable,
    memory: MemoryLimiter,
    shutdown: Arc<AtomicBool>,
    config: WasiConfigVariables,
    lookup: Option<crate::NameLookup>,
}

impl WasiView for P2Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

/// stdout/stderr of a guest, into its log sink.
struct LogStdout(LogSink, Stream);

impl IsTerminal for LogStdout {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStdout {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.0.writer(self.1))
    }
}

/// Where one of a guest's output streams goes: the container log, or the
/// caller of an exec.
enum Out {
    Log(LogStdout),
    Pipe(AsyncStdoutStream),
}

impl IsTerminal for Out {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Out {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        match self {
            Out::Log(l) => l.async_stream(),
            Out::Pipe(p) => p.async_stream(),
        }
    }

    fn p2_stream(&self) -> Box<dyn wasmtime_wasi::p2::OutputStream> {
        match self {
            Out::Log(l) => l.p2_stream(),
            Out::Pipe(p) => p.p2_stream(),
        }
    }
}

/// The standard streams of one instance.
struct Stdio {
    stdin: Option<AsyncStdinStream>,
    stdout: Out,
    stderr: Out,
}

impl Stdio {
    fn log(sink: &LogSink) -> Self {
        Self {
            stdin: None,
            stdout: Out::Log(LogStdout(sink.clone(), Stream::Stdout)),
            stderr: Out::Log(LogStdout(sink.clone(), Stream::Stderr)),
        }
    }

    /// The stdio of an exec, and the handles that close its output.
    fn exec(io: ExecIo) -> (Self, [Revocable; 2]) {
        let (stdout, stderr) = (Revocable::new(io.stdout), Revocable::new(io.stderr));
        let stdio = Self {
            stdin: io.stdin.map(AsyncStdinStream::new),
            stdout: Out::Pipe(AsyncStdoutStream::new(PIPE_BUDGET, stdout.clone())),
            stderr: Out::Pipe(AsyncStdoutStream::new(PIPE_BUDGET, stderr.clone())),
        };
        (stdio, [stdout, stderr])
    }
}

type Writer = Box<dyn tokio::io::AsyncWrite + Send + Sync + Unpin>;

/// A writer the runtime can take back, so that an exec's output ends (EOF
/// for the caller) when its command does, whatever wasmtime-wasi's stream
/// workers still hold.
#[derive(Clone)]
struct Revocable(Arc<Mutex<Option<Writer>>>);

impl Revocable {
    fn new(w: Writer) -> Self {
        Self(Arc::new(Mutex::new(Some(w))))
    }

    fn revoke(&self) {
        lock(&self.0).take();
    }

    fn with<R>(
        &self,
        f: impl FnOnce(std::pin::Pin<&mut Writer>) -> std::task::Poll<std::io::Result<R>>,
    ) -> std::task::Poll<std::io::Result<R>> {
        match lock(&self.0).as_mut() {
            Some(w) => f(std::pin::Pin::new(w)),
            None => std::task::Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
        }
    }
}

impl tokio::io::AsyncWrite for Revocable {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.with(|w| w.poll_write(cx, buf))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.with(|w| w.poll_flush(cx))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.with(|w| w.poll_shutdown(cx))
    }
}

/// Bytes a guest may have in flight to an exec's output.
const PIPE_BUDGET: usize = 64 * 1024;

/// The import module of the graceful-shutdown interface (`wit/wasmkube.wit`).
pub const LIFECYCLE: &str = "wasmkube:pod/lifecycle@0.1.0";

/// The runtime's order to end a guest now.
#[derive(Default)]
struct Kill {
    flag: AtomicBool,
    notify: tokio::sync::Notify,
}

impl Kill {
    fn raise(&self) {
        self.flag.store(true, Ordering::Relaxed);
        self.notify.notify_waiters();
    }

    fn raised(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// Resolves once raised.
    async fn wait(&self) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if !self.raised() {
            notified.await;
        }
    }
}

/// One instance to run: a container's main process or an exec.
struct Launch<'a> {
    spec: &'a ContainerSpec,
    args: &'a [String],
    stdio: Stdio,
    /// End the guest now.
    stop: Arc<Kill>,
    /// What `wasmkube:pod/lifecycle.shutdown-requested` answers.
    shutdown: Arc<AtomicBool>,
    /// The container's usage counters.
    usage: Arc<Usage>,
}

/// May a guest of a pod at `pod_ip` use `addr` this way? Binds: the
/// unspecified address or the pod's own; everything else is refused (until
/// pod networking, a bind on the unspecified address shares the node's ports).
/// Connections: anywhere.
fn socket_allowed(pod_ip: Option<IpAddr>, addr: SocketAddr, use_: SocketAddrUse) -> bool {
    match use_ {
        SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => {
            addr.ip().is_unspecified() || Some(addr.ip()) == pod_ip
        }
        _ => true,
    }
}

fn wasi_builder(launch: Launch<'_>) -> Result<WasiCtxBuilder, String> {
    let spec = launch.spec;
    let mut b = WasiCtxBuilder::new();
    b.args(launch.args);
    let mut env = spec.env.clone();
    if let Some(wd) = &spec.working_dir {
        env.push(("PWD".into(), wd.clone()));
    }
    b.envs(&env);
    if let Some(stdin) = launch.stdio.stdin {
        b.stdin(stdin);
    }
    b.stdout(launch.stdio.stdout);
    b.stderr(launch.stdio.stderr);
    let pod_ip = spec.pod_ip;
    b.allow_tcp(true)
        .allow_udp(true)
        .allow_ip_name_lookup(true)
        .socket_addr_check(move |addr, use_| {
            let ok = socket_allowed(pod_ip, addr, use_);
            Box::pin(async move { ok })
        });
    for m in &spec.mounts {
        let perms = if m.read_only {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        b.preopened_dir(&m.host_path, &m.guest_path, perms)
            .map_err(|e| {
                format!(
                    "mounting {} at {}: {e}",
                    m.host_path.display(),
                    m.guest_path
                )
            })?;
    }
    Ok(b)
}

/// Install the epoch callback: stop requests interrupt, every tick yields,
/// and a CPU limit throttles.
fn schedule<T: Send + 'static>(
    store: &mut Store<T>,
    stop: Arc<Kill>,
    cpu_millis: Option<u64>,
    usage: Arc<Usage>,
) {
    let throttle = CpuThrottle::new(cpu_millis, Some(usage));
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if stop.raised() {
            return Ok(wasmtime::UpdateDeadline::Interrupt);
        }
        Ok(wasmtime::UpdateDeadline::YieldCustom(1, throttle.pause()))
    });
}

enum Outcome {
    Exited(i32),
    Trapped(String),
}

fn outcome(r: wasmtime::Result<()>) -> Outcome {
    match r {
        Ok(()) => Outcome::Exited(0),
        Err(e) => match e.downcast_ref::<I32Exit>() {
            Some(exit) => Outcome::Exited(exit.0),
            None => Outcome::Trapped(format!("{e:#}")),
        },
    }
}

async fn run_p1(module: &Module, launch: Launch<'_>) -> (Outcome, bool) {
    let engine = module.engine();
    let (memory_limit, cpu) = (launch.spec.memory_limit, launch.spec.cpu_millis);
    let (stop, shutdown) = (launch.stop.clone(), launch.shutdown.clone());
    let usage = launch.usage.clone();
    let wasi = match wasi_builder(launch) {
        Ok(mut b) => b.build_p1(),
        Err(e) => return (Outcome::Trapped(e), false),
    };
    let mut store = Store::new(
        engine,
        P1Host {
            wasi,
            memory: MemoryLimiter::new(memory_limit, Some(usage.clone())),
            shutdown,
        },
    );
    store.limiter(|h| &mut h.memory);
    schedule(&mut store, stop, cpu, usage);
    let result = async {
        // The linker (its names and definitions, about 13 KB) is needed
        // only to instantiate: an idle guest runs for hours without it.
        let mut linker = wasmtime::Linker::new(engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |h: &mut P1Host| &mut h.wasi)?;
        linker.func_wrap(
            LIFECYCLE,
            "shutdown-requested",
            |caller: wasmtime::Caller<'_, P1Host>| -> i32 {
                caller.data().shutdown.load(Ordering::Relaxed) as i32
            },
        )?;
        // boxed: this future lives as long as the guest runs
        let instance = Box::pin(linker.instantiate_async(&mut store, module)).await?;
        drop(linker);
        let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
        start.call_async(&mut store, ()).await
    }
    .await;
    let oom = store.data().memory.exceeded();
    (outcome(result), oom)
}

async fn run_p2(component: &Component, launch: Launch<'_>) -> (Outcome, bool) {
    let engine = component.engine();
    let (memory_limit, cpu) = (launch.spec.memory_limit, launch.spec.cpu_millis);
    let (stop, shutdown) = (launch.stop.clone(), launch.shutdown.clone());
    let usage = launch.usage.clone();
    let config = WasiConfigVariables::from_iter(launch.spec.env.clone());
    let lookup = launch.spec.name_lookup.clone();
    let ctx = match wasi_builder(launch) {
        Ok(mut b) => b.build(),
        Err(e) => return (Outcome::Trapped(e), false),
    };
    let mut store = Store::new(
        engine,
        P2Host {
            ctx,
            table: ResourceTable::new(),
            memory: MemoryLimiter::new(memory_limit, Some(usage.clone())),
            shutdown,
            config,
            lookup,
        },
    );
    store.limiter(|h| &mut h.memory);
    schedule(&mut store, stop, cpu, usage);
    let result = async {
        // needed only to instantiate (see run_p1)
        let mut linker = wasmtime::component::Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_config::add_to_linker(&mut linker, |h: &mut P2Host| {
            WasiConfig::from(&h.config)
        })?;
        guest_imports(&mut linker)?;
        let command = Box::pin(wasmtime_wasi::p2::bindings::Command::instantiate_async(
            &mut store, component, &linker,
        ))
        .await?;
        drop(linker);
        match command.wasi_cli_run().call_run(&mut store).await? {
            Ok(()) => Ok(()),
            Err(()) => Err(wasmtime::Error::new(I32Exit(1))),
        }
    }
    .await;
    let oom = store.data().memory.exceeded();
    (outcome(result), oom)
}

/// The `wasi:sockets` name lookup this runtime links: cluster names
/// (Services, pods) are answered by the spec's [`crate::NameLookup`], with
/// one of their addresses; other names go to wasmtime-wasi's lookup (the
/// node's resolver).
fn cluster_name_lookup<T: GuestHost>(
    linker: &mut wasmtime::component::Linker<T>,
) -> wasmtime::Result<()> {
    use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::{Host, ResolveAddressStream};
    use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, Network};
    use wasmtime_wasi::sockets::WasiSocketsView;
    type Answer = (Result<wasmtime::component::Resource<ResolveAddressStream>, ErrorCode>,);
    linker.allow_shadowing(true);
    linker.instance(IP_NAME_LOOKUP)?.func_wrap(
        "resolve-addresses",
        |mut store: wasmtime::StoreContextMut<'_, T>,
         (network, name): (wasmtime::component::Resource<Network>, String)|
         -> wasmtime::Result<Answer> {
            let host = store.data_mut();
            let name = match host.lookup().and_then(|l| (l.0)(&name)) {
                Some(addrs) if addrs.is_empty() => return Ok((Err(ErrorCode::NameUnresolvable),)),
                Some(addrs) => {
                    // spread clients over a headless Service's pods
                    let pick = rand_index(addrs.len());
                    addrs[pick].to_string()
                }
                None => name,
            };
            let mut view = host.sockets();
            match Host::resolve_addresses(&mut view, network, name) {
                Ok(stream) => Ok((Ok(stream),)),
                Err(e) => Ok((Err(e.downcast()?),)),
            }
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// The name-lookup interface of the WASI version wasmtime-wasi links.
const IP_NAME_LOOKUP: &str = "wasi:sockets/ip-name-lookup@0.2.12";

fn rand_index(len: usize) -> usize {
    use std::time::UNIX_EPOCH;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as usize)
        .unwrap_or(0);
    nanos % len.max(1)
}

/// Run one instance of `compiled` (on the engine that compiled it) to its
/// end, and say how it ended.
async fn launch(compiled: &Compiled, launch: Launch<'_>, started_at: SystemTime) -> Exit {
    let (memory_limit, stop) = (launch.spec.memory_limit, launch.stop.clone());
    let run = async {
        match compiled {
            Compiled::Module(m) => run_p1(m, launch).await,
            Compiled::Component(c) => run_p2(c, launch).await,
        }
    };
    // Epoch interruption stops a guest running Wasm code; one blocked in a
    // host call (accept, a long sleep) is stopped by dropping its future,
    // which drops its instance.
    let (out, oom) = tokio::select! {
        r = run => r,
        _ = stop.wait() => (Outcome::Trapped("stopped".into()), false),
    };
    let (exit_code, reason, message) = match out {
        _ if oom => (
            KILLED_EXIT_CODE,
            "OOMKilled",
            Some(format!(
                "memory limit of {} bytes exceeded",
                memory_limit.unwrap_or(0)
            )),
        ),
        _ if stop.raised() => (KILLED_EXIT_CODE, "Killed", None),
        Outcome::Exited(0) => (0, "Completed", None),
        Outcome::Exited(code) => (code, "Error", None),
        Outcome::Trapped(msg) => (TRAP_EXIT_CODE, "Error", Some(msg)),
    };
    Exit {
        exit_code,
        reason: reason.into(),
        message,
        started_at,
        finished_at: SystemTime::now(),
    }
}

async fn run(container: Arc<Container>, started_at: SystemTime) {
    let spec = &container.spec;
    let (sink, writer) = logs::open(spec.log_path.clone(), logs::DEFAULT_MAX_BYTES);
    let exit = launch(
        &container.compiled,
        Launch {
            spec,
            args: &spec.args,
            stdio: Stdio::log(&sink),
            stop: container.stop.clone(),
            shutdown: container.shutdown.clone(),
            usage: container.usage.clone(),
        },
        started_at,
    )
    .await;
    drop(sink);
    writer.finish().await;
    container.state.send_replace(ContainerState::Exited(exit));
}

/// An HTTP function "runs" while it accepts requests: no instance lives
/// between them. Asked to stop, it takes no new requests and ends once those
/// in flight are done (or is killed at the end of the grace period).
async fn run_function(container: Arc<Container>, started_at: SystemTime) {
    let Some(f) = container.function.clone() else {
        return;
    };
    let (sink, writer) = logs::open(container.spec.log_path.clone(), logs::DEFAULT_MAX_BYTES);
    *lock(&f.log) = Some(sink);
    loop {
        if container.stop.raised() {
            break;
        }
        if container.shutdown.load(Ordering::Relaxed) && f.in_flight.load(Ordering::Relaxed) == 0 {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(http::DRAIN_POLL) => {}
            _ = container.stop.wait() => {}
        }
    }
    lock(&f.log).take();
    writer.finish().await;
    let killed = container.stop.raised() && f.in_flight.load(Ordering::Relaxed) > 0;
    container.state.send_replace(ContainerState::Exited(Exit {
        exit_code: if killed { KILLED_EXIT_CODE } else { 0 },
        reason: if killed { "Killed" } else { "Completed" }.into(),
        message: None,
        started_at,
        finished_at: SystemTime::now(),
    }));
}

#[async_trait::async_trait]
impl ContainerRuntime for WasmRuntime {
    fn name(&self) -> &'static str {
        "wasm"
    }

    fn supports(&self, image: &str) -> bool {
        // file:// images and OCI references; the OCI shim claims non-Wasm images later.
        !image.is_empty()
    }

    async fn create(&self, spec: ContainerSpec) -> Result<Created, RuntimeError> {
        let loaded = match ImageRef::parse(&spec.image) {
            ImageRef::File(path) => image::load_file(&spec.image, &path).await?,
            ImageRef::Registry(r) => {
                self.inner
                    .images
                    .get(&r, spec.pull_policy, spec.pull_credentials.as_ref())
                    .await?
            }
        };
        let image_id = loaded.digest.clone();
        let compiled = self
            .compile(loaded.bytes, &loaded.digest)
            .await
            .map_err(|reason| RuntimeError::Create {
                id: spec.id.clone(),
                reason,
            })?;
        let netns = match &spec.sandbox {
            None => None,
            Some(path) => Some(self.netns(path).map_err(|e| RuntimeError::Create {
                id: spec.id.clone(),
                reason: format!("joining the pod's network namespace: {e}"),
            })?),
        };
        let (state, _) = watch::channel(ContainerState::Created);
        let function = match &compiled {
            Compiled::Component(c) if compiled.is_http_handler() => Some(Arc::new(
                http::Function::new(c.engine(), c, spec.http, self.inner.outgoing_tls.clone())
                    .map_err(|e| RuntimeError::Create {
                        id: spec.id.clone(),
                        reason: format!("preparing the HTTP function: {e:#}"),
                    })?,
            )),
            _ => None,
        };
        // an HTTP function hears the ask as the end of new requests, and
        // gets the grace period to finish those in flight
        let listens = compiled.imports_lifecycle() || function.is_some();
        let container = Arc::new(Container {
            spec: spec.clone(),
            compiled,
            state,
            stop: Arc::new(Kill::default()),
            shutdown: Arc::new(AtomicBool::new(false)),
            listens,
            function,
            usage: Arc::default(),
            netns,
        });
        lock(&self.inner.containers).insert(spec.id, container);
        Ok(Created { image_id })
    }

    async fn start(&self, id: &ContainerId) -> Result<(), RuntimeError> {
        let c = self.container(id)?;
        let started_at = SystemTime::now();
        let started = c.state.send_if_modified(|s| {
            if *s == ContainerState::Created {
                *s = ContainerState::Running { started_at };
                true
            } else {
                false
            }
        });
        if !started {
            return Err(RuntimeError::Start {
                id: id.clone(),
                reason: "container already started".into(),
            });
        }
        let spawner = match &c.netns {
            Some(ns) => ns.handle().clone(),
            None => tokio::runtime::Handle::current(),
        };
        if c.function.is_some() {
            spawner.spawn(run_function(c, started_at));
        } else {
            spawner.spawn(run(c, started_at));
        }
        Ok(())
    }

    fn is_http_function(&self, id: &ContainerId) -> bool {
        self.container(id).is_ok_and(|c| c.function.is_some())
    }

    async fn serve_http(
        &self,
        id: &ContainerId,
        req: ::http::Request<crate::HttpBody>,
    ) -> Result<::http::Response<crate::HttpBody>, RuntimeError> {
        let c = self.container(id)?;
        let Some(f) = &c.function else {
            return Err(RuntimeError::NotFound(id.clone()));
        };
        if !matches!(*c.state.borrow(), ContainerState::Running { .. })
            || c.shutdown.load(Ordering::Relaxed)
        {
            return Ok(http::host_response(
                503,
                "the function is not running".into(),
            ));
        }
        Ok(http::handle(
            c.compiled.engine(),
            &c.spec,
            c.shutdown.clone(),
            c.usage.clone(),
            f,
            req,
        )
        .await)
    }

    fn usage(&self, id: &ContainerId) -> Option<crate::ContainerUsage> {
        let c = self.container(id).ok()?;
        let (requests, in_flight) = c.function.as_ref().map_or((0, 0), |f| {
            (
                f.served.load(Ordering::Relaxed),
                f.in_flight.load(Ordering::Relaxed) as u64,
            )
        });
        Some(crate::ContainerUsage {
            cpu_nanos: c.usage.cpu_nanos.load(Ordering::Relaxed),
            memory_bytes: c.usage.memory_bytes.load(Ordering::Relaxed),
            requests,
            in_flight,
        })
    }

    async fn stop(&self, id: &ContainerId, grace: Duration) -> Result<(), RuntimeError> {
        let c = self.container(id)?;
        let mut rx = c.state.subscribe();
        let exited =
            |s: &ContainerState| matches!(s, ContainerState::Exited(_) | ContainerState::Created);
        // WASI has no signals. Ask through `wasmkube:pod/lifecycle`; a guest
        // that imports it gets the whole grace period to finish, one that
        // cannot hear the ask is interrupted at once (after a tick or two in
        // which it may still end on its own).
        c.shutdown.store(true, Ordering::Relaxed);
        let wait = if c.listens {
            grace
        } else {
            grace.min(TICK * 2)
        };
        let natural =
            tokio::time::timeout(wait, async { rx.wait_for(exited).await.map(|_| ()) }).await;
        if natural.is_err() {
            c.stop.raise();
            let _ = rx.wait_for(exited).await.map(|_| ());
        }
        Ok(())
    }

    async fn remove(&self, id: &ContainerId) -> Result<(), RuntimeError> {
        let c = lock(&self.inner.containers).remove(id);
        if let Some(c) = c {
            c.stop.raise();
        }
        Ok(())
    }

    async fn status(&self, id: &ContainerId) -> Result<ContainerState, RuntimeError> {
        Ok(self.container(id)?.state.borrow().clone())
    }

    async fn wait(&self, id: &ContainerId) -> Result<Exit, RuntimeError> {
        let c = self.container(id)?;
        let mut rx = c.state.subscribe();
        let exit = rx
            .wait_for(|s| matches!(s, ContainerState::Exited(_)))
            .await
            .map(|state| match &*state {
                ContainerState::Exited(e) => Some(e.clone()),
                _ => None,
            })
            .map_err(|_| RuntimeError::NotFound(id.clone()))?;
        exit.ok_or_else(|| RuntimeError::NotFound(id.clone()))
    }

    /// A fresh instance of the container's image, with its env, mounts and
    /// limits, running `command` as argv; ends with the container.
    async fn exec(
        &self,
        id: &ContainerId,
        command: Vec<String>,
        io: ExecIo,
    ) -> Result<Exit, RuntimeError> {
        let c = self.container(id)?;
        if !matches!(*c.state.borrow(), ContainerState::Running { .. }) {
            return Err(RuntimeError::Exec {
                id: id.clone(),
                reason: "container is not running".into(),
            });
        }
        if command.is_empty() {
            return Err(RuntimeError::Exec {
                id: id.clone(),
                reason: "no command given".into(),
            });
        }
        let (stdio, outputs) = Stdio::exec(io);
        let exit = launch(
            &c.compiled,
            Launch {
                spec: &c.spec,
                args: &command,
                stdio,
                // stopping the container stops its execs too
                stop: c.stop.clone(),
                shutdown: c.shutdown.clone(),
                usage: c.usage.clone(),
            },
            SystemTime::now(),
        )
        .await;
        for o in &outputs {
            o.revoke();
        }
        Ok(exit)
    }
}

#[cfg(test)]
mod tests;
