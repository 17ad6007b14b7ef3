//! `wk`: the wasmkube server binary (`wk server`, `wk snapshot`).

/// mimalloc rather than glibc's malloc: with 5,000 hollow nodes the
/// server spent a third of its CPU in glibc's `malloc`/`free` (arena locks,
/// `malloc_consolidate`), and placed 586–636 pods/s end to end against
/// 1,868 with mimalloc, at an idle RSS within 2 MiB of glibc's
/// (docs/benchmarks.md, "2,000 pods a second").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use wasmkube::server::{self, ServerConfig};

#[derive(Parser)]
#[command(
    name = "wk",
    version,
    about = "wasmkube: a WebAssembly-first container orchestrator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane (API server, store, controllers) and an embedded node agent.
    Server(ServerArgs),
    /// Run a node agent that joins a cluster.
    Agent(AgentArgs),
    /// Save or restore a point-in-time snapshot of the store.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Manage join tokens (bootstrap tokens) for agents.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Secrets encryption at rest: show the keys, or rotate them.
    #[command(name = "secrets-encrypt", subcommand)]
    SecretsEncrypt(SecretsEncryptCommand),
    /// Linux container images on this node (air-gapped import, list).
    #[command(subcommand)]
    Image(ImageCommand),
    /// The servers of the control plane's Raft cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// List the servers: id, address, voter or learner, which one leads.
    Members {
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// Remove a server (by id, from `wk cluster members`); it stops. To
    /// replace a dead server, remove it and join a new one.
    Remove {
        id: u64,
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Import images from a docker-archive (`docker save`) or OCI-layout
    /// tarball into the node's image store, with no registry involved.
    Import {
        /// The tarball (plain, gzip or zstd).
        file: PathBuf,
        /// The agent's data directory [default: the server's data directory + /agent].
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// List the Linux images on this node.
    List {
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum SecretsEncryptCommand {
    /// Show the active key and how many Secrets each key seals.
    Status {
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// Make a new key active, re-encrypt every Secret with it and retire
    /// the old ones.
    RotateKeys {
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a join token; prints it (K10<CA hash>::<id>.<secret>).
    Create {
        /// How long the token is valid (e.g. 30m, 24h, 7d; 0 for ever).
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// A note kept with the token.
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// List join tokens.
    List {
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// Delete join tokens by id (the part before the dot) or whole token.
    Delete {
        #[arg(required = true)]
        tokens: Vec<String>,
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
}

#[derive(Parser)]
struct ServerArgs {
    /// Where the store, token and kubeconfig live.
    #[arg(long, env = "WK_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address to serve the API on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// This node's name (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// Address clients and peers use to reach this server (default: the listen address).
    #[arg(long)]
    advertise: Option<String>,
    /// Changes kept for watch resumption; older resourceVersions get 410 Gone.
    #[arg(long, default_value_t = 50_000)]
    watch_history: usize,
    /// Seconds a change stays in the watch window (at most
    /// --watch-history of them). 75, what Kubernetes' watch cache counts
    /// as fresh; watches that ask for bookmarks keep a fresh resourceVersion.
    #[arg(long, default_value_t = 75.0)]
    watch_history_seconds: f64,
    /// Seconds between watch bookmarks for watches that ask for them.
    #[arg(long, default_value_t = 10.0)]
    bookmark_interval: f64,
    /// Raft log entries between store snapshots (the log behind a snapshot is purged).
    #[arg(long, default_value_t = 10_000)]
    snapshot_logs: u64,
    /// Join the cluster of this server (`https://HOST:PORT`, any server of
    /// it) instead of starting a new one. Used on first start only: a
    /// restarted server uses its stored membership.
    #[arg(long, requires = "token")]
    join: Option<String>,
    /// The cluster's server token (its DATA_DIR/token), for --join.
    #[arg(long, env = "WK_TOKEN")]
    token: Option<String>,
    /// Raft heartbeat interval in milliseconds. It is also how long the
    /// leader waits for a follower's answer to an append (openraft uses one
    /// setting for both), so it must cover a follower's fsync under load.
    #[arg(long, default_value_t = 250)]
    raft_heartbeat_ms: u64,
    /// Raft election timeout in milliseconds: a follower that hears no
    /// leader for the old leader's lease (1.5× this) plus a random time
    /// between this and 1.5× this stands for election. Must exceed the
    /// heartbeat interval.
    #[arg(long, default_value_t = 300)]
    raft_election_timeout_ms: u64,
    /// Do not run the embedded node agent.
    #[arg(long)]
    disable_agent: bool,
    /// Run only the API server and the namespace controller: no scheduler,
    /// no workload controllers, no garbage collector.
    #[arg(long)]
    disable_controllers: bool,
    /// Seconds without a heartbeat after which a node is unreachable.
    #[arg(long, default_value_t = 40.0)]
    node_monitor_grace_period: f64,
    /// Seconds after which pods that do not tolerate an unreachable node
    /// are evicted from it (and replaced by their controllers).
    #[arg(long, default_value_t = 60.0)]
    pod_eviction_timeout: f64,
    /// Seconds between autoscaler evaluations (kube-controller-manager's
    /// --horizontal-pod-autoscaler-sync-period).
    #[arg(long, default_value_t = 15.0)]
    horizontal_pod_autoscaler_sync_period: f64,
    /// How the scheduler scores nodes: most-allocated (bin packing: fill a
    /// node before the next) or least-allocated (spread the load).
    #[arg(long, default_value = "most-allocated")]
    scheduling_strategy: wasmkube::controllers::scheduler::Strategy,
    /// Where Service cluster IPs come from (kube-apiserver's
    /// --service-cluster-ip-range). The 10th address is the cluster DNS.
    #[arg(long, default_value = "127.32.0.0/16")]
    service_cidr: wasmkube::network::Cidr,
    /// Where pod IPs come from; each node gets a piece of it (spec.podCIDR).
    #[arg(long, default_value = "127.64.0.0/10")]
    cluster_cidr: wasmkube::network::Cidr,
    /// The prefix length of each node's piece of --cluster-cidr.
    #[arg(long, default_value_t = 19)]
    node_cidr_mask_size: u8,
    /// Extra host names or addresses for the API server's certificate
    /// (repeat, or separate with commas).
    #[arg(long, value_delimiter = ',')]
    tls_san: Vec<String>,
    /// Write an audit.k8s.io/v1 event per request (Metadata level) to this file.
    #[arg(long)]
    audit_log_path: Option<PathBuf>,
    /// Rotate the audit log when it reaches this many megabytes.
    #[arg(long, default_value_t = 100)]
    audit_log_maxsize: u64,
    /// Rotated audit logs to keep.
    #[arg(long, default_value_t = 10)]
    audit_log_maxbackup: usize,
    #[command(flatten)]
    agent: AgentTuning,
}

/// Agent settings shared by `wk server` (embedded agent) and `wk agent`.
#[derive(clap::Args)]
struct AgentTuning {
    /// First container restart back-off in milliseconds (doubles up to 5 minutes).
    #[arg(long, default_value_t = 10_000)]
    backoff_base_ms: u64,
    /// Node status and Lease renewal interval in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    heartbeat_ms: u64,
    /// Pods this node accepts (its `pods` capacity; the Wasm instance pool size).
    #[arg(long, default_value_t = 1000)]
    max_pods: u32,
    /// CPU the node offers to pods, as a quantity (default: all its cores).
    #[arg(long)]
    cpu: Option<String>,
    /// Memory the node offers to pods, as a quantity (default: all of it).
    #[arg(long)]
    memory: Option<String>,
    /// Where the Ingress gateway serves HTTP: ADDRESS:PORT, `node:PORT`
    /// for the node's address, or `off`. Pod addresses are local to the
    /// node, so a wildcard address (0.0.0.0) would take this port from
    /// every pod; give a specific address.
    #[arg(long, default_value = "node:8080")]
    ingress_listen: String,
    /// Where the Ingress gateway serves HTTPS, with certificates from the
    /// Ingresses' TLS Secrets chosen by SNI (same forms).
    #[arg(long, default_value = "node:8443")]
    ingress_tls_listen: String,
    /// Remove unused Linux images when the image filesystem is this full
    /// (percent), as the kubelet's flag of the same name.
    #[arg(long, default_value_t = wasmkube_runtime::oci::gc::DEFAULT_HIGH_PERCENT)]
    image_gc_high_threshold: u8,
    /// ... down to this percent.
    #[arg(long, default_value_t = wasmkube_runtime::oci::gc::DEFAULT_LOW_PERCENT)]
    image_gc_low_threshold: u8,
    /// Start a module never seen before on Winch code (fast to compile)
    /// while Cranelift compiles it in the background (x86-64). `false`:
    /// every new module waits for Cranelift.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    wasm_baseline_compiler: bool,
}

/// A listen address flag: `off` (or empty) disables; `node:PORT` is the
/// node's address.
fn listen_flag(flag: &str, v: &str, node_ip: &str) -> anyhow::Result<Option<SocketAddr>> {
    let v = match v.strip_prefix("node:") {
        Some(port) => format!("{node_ip}:{port}"),
        None => v.to_string(),
    };
    match v.as_str() {
        "" | "off" | "none" => Ok(None),
        v => v.parse().map(Some).map_err(|_| {
            anyhow::anyhow!(
                "--{flag}: {v:?} is not an address such as 127.0.0.1:8080, node:8080 or off"
            )
        }),
    }
}

impl AgentTuning {
    /// Reject capacities that are not quantities, naming the flag.
    fn check(&self) -> anyhow::Result<()> {
        use wasmkube::api::quantity;
        if let Some(c) = &self.cpu {
            quantity::millicores(c).map_err(|e| anyhow::anyhow!("--cpu {c:?}: {e}"))?;
        }
        if let Some(m) = &self.memory {
            quantity::bytes(m).map_err(|e| anyhow::anyhow!("--memory {m:?}: {e}"))?;
        }
        listen_flag("ingress-listen", &self.ingress_listen, "127.0.0.1")?;
        listen_flag("ingress-tls-listen", &self.ingress_tls_listen, "127.0.0.1")?;
        let (high, low) = (self.image_gc_high_threshold, self.image_gc_low_threshold);
        if high > 100 {
            anyhow::bail!("--image-gc-high-threshold {high}: a percentage, 0 to 100");
        }
        if low > high {
            anyhow::bail!(
                "--image-gc-low-threshold {low} is above --image-gc-high-threshold {high}"
            );
        }
        Ok(())
    }

    fn apply(&self, mut c: wasmkube::agent::AgentConfig) -> wasmkube::agent::AgentConfig {
        c.backoff_base = Duration::from_millis(self.backoff_base_ms.max(1));
        c.heartbeat = Duration::from_millis(self.heartbeat_ms.max(100));
        c.max_pods = self.max_pods.max(1);
        c.cpu = self.cpu.clone();
        c.memory = self.memory.clone();
        c.image_gc_high = self.image_gc_high_threshold;
        c.image_gc_low = self.image_gc_low_threshold;
        c.wasm_baseline_compiler = self.wasm_baseline_compiler;
        c
    }

    /// The gateway's addresses, once the node's address is known.
    fn ingress(&self, c: &mut wasmkube::agent::AgentConfig) {
        let ip = c.advertise_ip.clone();
        c.ingress_listen = listen_flag("ingress-listen", &self.ingress_listen, &ip).unwrap_or(None);
        c.ingress_tls_listen =
            listen_flag("ingress-tls-listen", &self.ingress_tls_listen, &ip).unwrap_or(None);
    }
}

#[derive(Parser)]
struct AgentArgs {
    /// The API server URL (e.g. https://10.0.0.1:6443).
    #[arg(long)]
    server: String,
    /// A join token: the server's DATA_DIR/token or one from `wk token
    /// create` (K10<CA hash>::...). Needed to join; an agent that has
    /// joined before uses the certificates it keeps.
    #[arg(long, env = "WK_TOKEN")]
    token: Option<String>,
    /// This node's name (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// Where pods, logs and the compile cache live.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The node's address, as pods and the API server see it.
    #[arg(long, default_value = "127.0.0.1")]
    advertise_address: String,
    /// Where the agent serves logs, exec and attach to the API server
    /// (default: the advertised address, port 10250, which is where the API
    /// server looks for it).
    #[arg(long)]
    listen: Option<SocketAddr>,
    #[command(flatten)]
    agent: AgentTuning,
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Ask a running server for a consistent snapshot and write it to FILE.
    Save {
        file: PathBuf,
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// Create a new data directory that starts with exactly the state in FILE.
    Restore {
        file: PathBuf,
        #[arg(long)]
        data_dir: PathBuf,
    },
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_lowercase())
        .unwrap_or_else(|_| "localhost".into())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

fn kubeconfig_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("KUBECONFIG").map(PathBuf::from))
        .unwrap_or_else(|| server::kubeconfig_path(&server::default_data_dir()))
}

fn main() -> Result<()> {
    // a container's shim: no runtime of the server's, no logging set-up
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .get(1)
        .is_some_and(|a| a == wasmkube::agent::SHIM_SUBCOMMAND)
    {
        let Some(shim) = wasmkube_runtime::oci::shim::ShimArgs::parse(&args[2..]) else {
            bail!(
                "usage: wk {} RUNC RUNC_ROOT ID DIR LOG MEMORY_CGROUP",
                wasmkube::agent::SHIM_SUBCOMMAND
            );
        };
        std::process::exit(wasmkube_runtime::oci::shim::main(shim));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async_main());
    // a blocking task stuck on a failed disk must not keep the process up
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    result
}

/// An allocator keeps freed memory for reuse: after a burst (the watch
/// window's old versions leaving it, deleted pods, a relist) a server's RSS
/// stayed at its peak under glibc until `malloc_trim` (600 pods created and
/// deleted: 247 MB RSS, 147 MB after one trim). mimalloc returns freed
/// pages a second after they empty, but only when some allocation gets
/// there; a process gone quiet would keep them. Once a minute a thread of
/// its own forces that purge, off the request path.
fn return_freed_memory() {
    /// How often a long-running `wk` hands freed memory back.
    const COLLECT_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
    let spawned = std::thread::Builder::new()
        .name("mem-collect".into())
        .spawn(|| loop {
            std::thread::sleep(COLLECT_EVERY);
            // SAFETY: mi_collect only touches the allocator's own state
            unsafe { libmimalloc_sys::mi_collect(true) };
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no memory-collect thread");
    }
}

async fn async_main() -> Result<()> {
    wasmkube::tls::install_default_provider();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WK_LOG")
                .unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if matches!(cli.command, Command::Server(_) | Command::Agent(_)) {
        match wasmkube::agent::raise_open_file_limit() {
            Ok(n) => tracing::debug!(limit = n, "open files"),
            Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
        }
        return_freed_memory();
    }
    match cli.command {
        Command::Server(a) => {
            a.agent.check()?;
            let network = wasmkube::network::NetworkConfig {
                service_cidr: a.service_cidr,
                cluster_cidr: a.cluster_cidr,
                node_mask: a.node_cidr_mask_size,
            };
            network.check().map_err(anyhow::Error::msg)?;
            wasmkube::network::set(network);
            let data_dir = a.data_dir.unwrap_or_else(server::default_data_dir);
            let node_name = a.node_name.unwrap_or_else(hostname);
            let agent = (!a.disable_agent).then(|| {
                let mut c = a.agent.apply(wasmkube::agent::AgentConfig::new(
                    node_name.clone(),
                    data_dir.join("agent"),
                ));
                a.agent.ingress(&mut c);
                c
            });
            let config = ServerConfig {
                data_dir,
                listen: a.listen,
                node_name,
                advertise: a.advertise,
                watch_history: a.watch_history,
                watch_history_age: Duration::try_from_secs_f64(a.watch_history_seconds.max(0.0))
                    .unwrap_or(Duration::MAX),
                bookmark_interval: Duration::from_secs_f64(a.bookmark_interval.max(0.05)),
                snapshot_logs: a.snapshot_logs,
                join: match (a.join, a.token) {
                    (Some(url), Some(token)) => Some(server::JoinSpec { url, token }),
                    _ => None,
                },
                raft_timing: {
                    if a.raft_election_timeout_ms <= a.raft_heartbeat_ms {
                        bail!(
                            "--raft-election-timeout-ms ({}) must be greater than --raft-heartbeat-ms ({})",
                            a.raft_election_timeout_ms,
                            a.raft_heartbeat_ms
                        );
                    }
                    wasmkube::store::Timing {
                        heartbeat_ms: a.raft_heartbeat_ms.max(1),
                        election_timeout_min_ms: a.raft_election_timeout_ms,
                        election_timeout_max_ms: a.raft_election_timeout_ms * 3 / 2,
                    }
                },
                agent,
                tls_sans: a.tls_san,
                audit: a
                    .audit_log_path
                    .map(|path| wasmkube::apiserver::audit::AuditConfig {
                        path,
                        max_bytes: a.audit_log_maxsize.max(1) * 1024 * 1024,
                        max_backups: a.audit_log_maxbackup,
                    }),
                controllers: wasmkube::controllers::Config {
                    scheduling_strategy: a.scheduling_strategy,
                    workloads: !a.disable_controllers,
                    hpa_sync_period: Duration::from_secs_f64(
                        a.horizontal_pod_autoscaler_sync_period.max(0.1),
                    ),
                    node_timing: wasmkube::controllers::nodelifecycle::Timing {
                        grace: Duration::from_secs_f64(a.node_monitor_grace_period.max(0.1)),
                        eviction: Duration::from_secs_f64(a.pod_eviction_timeout.max(0.0)),
                    },
                    root_ca: String::new(),
                },
            };
            server::run(config, shutdown_signal()).await?;
        }
        Command::Agent(a) => {
            a.agent.check()?;
            let node_name = a.node_name.unwrap_or_else(hostname);
            let data_dir = a
                .data_dir
                .unwrap_or_else(|| server::default_data_dir().join("agent"));
            let mut config = a
                .agent
                .apply(wasmkube::agent::AgentConfig::new(node_name, data_dir));
            let listen = match a.listen {
                Some(l) => l,
                None => SocketAddr::new(
                    a.advertise_address.parse().map_err(|e| {
                        anyhow::anyhow!(
                            "--advertise-address {:?} is not an IP address: {e}",
                            a.advertise_address
                        )
                    })?,
                    10250,
                ),
            };
            config.advertise_ip = a.advertise_address;
            a.agent.ingress(&mut config);
            let identity = agent_identity(&a.server, a.token.as_deref(), &config).await?;
            config.cluster_ca = identity.server_ca.clone();
            let client = wasmkube::client::Client::new(
                a.server.clone(),
                &identity.server_ca,
                Some(&identity.client),
                wasmkube::client::Credentials::None,
            )?;
            let agent = wasmkube::agent::Agent::new(config, client.with_name("wk-agent"))?;
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let mut run = tokio::spawn(async move { agent.run(listen, &identity, stop_rx).await });
            tokio::select! {
                _ = shutdown_signal() => {
                    let _ = stop_tx.send(true);
                    (&mut run).await??;
                }
                r = &mut run => r??,
            }
        }
        Command::Snapshot(SnapshotCommand::Save { file, kubeconfig }) => {
            let client = wasmkube::client::Client::from_kubeconfig(&kubeconfig_path(kubeconfig))?;
            let resp = client
                .request_builder(reqwest::Method::GET, "/wk/v1/snapshot")
                .send()
                .await
                .with_context(|| format!("connecting to {}", client.server()))?;
            if !resp.status().is_success() {
                bail!(
                    "server answered {}: {}",
                    resp.status(),
                    resp.text().await.unwrap_or_default()
                );
            }
            let bytes = resp.bytes().await?;
            let snap: wasmkube::store::SnapshotData =
                serde_json::from_slice(&bytes).context("decoding snapshot")?;
            let tmp = file.with_extension("tmp");
            std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, &file).with_context(|| format!("writing {}", file.display()))?;
            println!(
                "Snapshot saved at {} (revision {}, {} objects)",
                file.display(),
                snap.revision,
                snap.objects.len()
            );
        }
        Command::Snapshot(SnapshotCommand::Restore { file, data_dir }) => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let keys_path = server::encryption_config_path(&data_dir);
            let keyring = match wasmkube::store::encryption::Keyring::load(&keys_path)? {
                Some(k) => k,
                None if String::from_utf8_lossy(&bytes).contains(wasmkube::store::encryption::PREFIX) => bail!(
                    "{} holds encrypted Secrets, and {} has no keys: copy cred/encryption-config.json from the data directory of the server that saved it to {} first",
                    file.display(),
                    data_dir.display(),
                    keys_path.display()
                ),
                None => wasmkube::store::encryption::Keyring::load_or_create(&keys_path)?,
            };
            let rev = wasmkube::store::restore(
                &bytes,
                &data_dir.join("raft"),
                1,
                "127.0.0.1:6443",
                std::sync::Arc::new(keyring),
            )
            .await
            .with_context(|| format!("restoring {} into {}", file.display(), data_dir.display()))?;
            println!(
                "Restored {} into {} (revision {rev})",
                file.display(),
                data_dir.display()
            );
        }
        Command::Token(cmd) => token_command(cmd).await?,
        Command::Cluster(cmd) => cluster_command(cmd).await?,
        Command::Image(cmd) => {
            let dir =
                |d: Option<PathBuf>| d.unwrap_or_else(|| server::default_data_dir().join("agent"));
            match cmd {
                ImageCommand::Import { file, data_dir } => {
                    let store = wasmkube::agent::oci_image_store(&dir(data_dir));
                    let refs = store
                        .import(&file)
                        .await
                        .with_context(|| format!("importing {}", file.display()))?;
                    for r in refs {
                        println!("imported {r}");
                    }
                }
                ImageCommand::List { data_dir } => {
                    let store = wasmkube::agent::oci_image_store(&dir(data_dir));
                    println!("{:<60} IMAGE ID", "IMAGE");
                    for (r, id) in store.list() {
                        println!("{r:<60} {}", &id[..id.len().min(19)]);
                    }
                }
            }
        }
        Command::SecretsEncrypt(cmd) => {
            let (kubeconfig, method, path) = match cmd {
                SecretsEncryptCommand::Status { kubeconfig } => {
                    (kubeconfig, reqwest::Method::GET, "status")
                }
                SecretsEncryptCommand::RotateKeys { kubeconfig } => {
                    (kubeconfig, reqwest::Method::POST, "rotate-keys")
                }
            };
            let client = wasmkube::client::Client::from_kubeconfig(&kubeconfig_path(kubeconfig))?;
            let v = client
                .request(method, &format!("/wk/v1/secrets-encrypt/{path}"), None)
                .await?;
            let status = if v.get("status").is_some() {
                &v["status"]
            } else {
                &v
            };
            if let Some(k) = v["activeKey"].as_str().filter(|_| path == "rotate-keys") {
                println!(
                    "Rotated to key {k}; re-encrypted {} secrets; old keys retired",
                    v["reencrypted"]
                );
            }
            println!(
                "Encryption Status: {}",
                status["encryption"].as_str().unwrap_or("?")
            );
            println!("Provider: {}", status["provider"].as_str().unwrap_or("?"));
            println!(
                "Active Key: {}",
                status["activeKey"].as_str().unwrap_or("?")
            );
            println!("Key Config: {}", status["config"].as_str().unwrap_or("?"));
            println!("Secrets by key:");
            for (k, n) in status["secretsByKey"].as_object().into_iter().flatten() {
                println!("  {k}: {n}");
            }
        }
    }
    Ok(())
}

/// The node identity an agent keeps, or a new one from joining.
async fn agent_identity(
    server: &str,
    token: Option<&str>,
    config: &wasmkube::agent::AgentConfig,
) -> Result<wasmkube::agent::identity::NodeIdentity> {
    use wasmkube::agent::identity;
    if let Some(id) = identity::NodeIdentity::load(&config.data_dir, &config.node_name) {
        return Ok(id);
    }
    let token = token.context(
        "this agent has not joined yet: give --token (the server's DATA_DIR/token, or one from `wk token create`)",
    )?;
    let password = identity::node_password(&config.data_dir)?;
    // an edge device may boot before its server is reachable: keep trying
    let mut backoff = Duration::from_secs(1);
    let id = loop {
        match identity::join(
            server,
            token,
            &config.node_name,
            &password,
            std::slice::from_ref(&config.advertise_ip),
        )
        .await
        {
            Ok(id) => break id,
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot reach the server to join");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(e.into()),
        }
    };
    id.save(&config.data_dir)?;
    tracing::info!(node = %config.node_name, %server, "joined the cluster");
    Ok(id)
}

async fn cluster_command(cmd: ClusterCommand) -> Result<()> {
    let (kubeconfig, method, path) = match &cmd {
        ClusterCommand::Members { kubeconfig } => (
            kubeconfig.clone(),
            reqwest::Method::GET,
            "/wk/v1/cluster/members".to_string(),
        ),
        ClusterCommand::Remove { id, kubeconfig } => (
            kubeconfig.clone(),
            reqwest::Method::DELETE,
            format!("/wk/v1/cluster/members/{id}"),
        ),
    };
    let client = wasmkube::client::Client::from_kubeconfig(&kubeconfig_path(kubeconfig))?;
    let resp = client
        .request_builder(method, &path)
        .send()
        .await
        .with_context(|| format!("connecting to {}", client.server()))?;
    if !resp.status().is_success() {
        let code = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        bail!(
            "server answered {code}: {}",
            body["message"].as_str().unwrap_or("refused")
        );
    }
    let m: wasmkube::store::cluster::Members = resp.json().await.context("decoding members")?;
    if let ClusterCommand::Remove { id, .. } = cmd {
        println!("server {id} removed");
    }
    println!(
        "{:<18} {:<24} {:<8} {:<7} MATCHED",
        "ID", "ADDRESS", "ROLE", "LEADER"
    );
    for s in &m.members {
        println!(
            "{:<18} {:<24} {:<8} {:<7} {}",
            s.id,
            s.address,
            s.role,
            if s.leader { "*" } else { "" },
            s.matched.map_or_else(|| "-".to_string(), |i| i.to_string())
        );
    }
    Ok(())
}

/// A TTL such as `30m`, `24h`, `7d` or `0`.
fn parse_ttl(s: &str) -> Result<Option<chrono::Duration>> {
    let s = s.trim();
    if s == "0" {
        return Ok(None);
    }
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = n
        .parse()
        .with_context(|| format!("--ttl {s:?}: expected a number and a unit (s, m, h, d)"))?;
    let secs = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        other => bail!("--ttl {s:?}: unknown unit {other:?} (use s, m, h or d)"),
    };
    Ok(Some(chrono::Duration::seconds(secs)))
}

async fn token_command(cmd: TokenCommand) -> Result<()> {
    use base64::Engine;
    use wasmkube::auth::join;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let unb64 = |v: &serde_json::Value| {
        v.as_str()
            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default()
    };
    let secrets = wasmkube::api::resources::lookup("secrets").expect("secrets are served");
    match cmd {
        TokenCommand::Create {
            ttl,
            description,
            kubeconfig,
        } => {
            let ttl = parse_ttl(&ttl)?;
            let path = kubeconfig_path(kubeconfig);
            let kc = wasmkube::client::Kubeconfig::load(&path)?;
            let ca = kc
                .ca
                .clone()
                .context("the kubeconfig has no certificate-authority-data to hash")?;
            let client = wasmkube::client::Client::from_config(&kc)?;
            let (id, secret) = (join::random_alnum(6), join::random_alnum(16));
            let mut data = serde_json::json!({
                "token-id": b64(&id),
                "token-secret": b64(&secret),
                "usage-bootstrap-authentication": b64("true"),
            });
            if let Some(d) = ttl {
                data["expiration"] =
                    b64(&(chrono::Utc::now() + d)
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .into();
            }
            if let Some(d) = &description {
                data["description"] = b64(d).into();
            }
            let obj = serde_json::json!({"apiVersion": "v1", "kind": "Secret",
                "type": "bootstrap.kubernetes.io/token",
                "metadata": {"name": join::bootstrap_secret_name(&id), "namespace": "kube-system"},
                "data": data});
            client.create(secrets, Some("kube-system"), &obj).await?;
            let token = join::JoinToken {
                ca_hash: wasmkube::tls::pki::sha256_hex(ca.as_bytes()),
                credential: join::Credential::Bootstrap { id, secret },
            };
            println!("{token}");
        }
        TokenCommand::List { kubeconfig } => {
            let client = wasmkube::client::Client::from_kubeconfig(&kubeconfig_path(kubeconfig))?;
            let list = client
                .list(
                    secrets,
                    Some("kube-system"),
                    "fieldSelector=type%3Dbootstrap.kubernetes.io%2Ftoken",
                )
                .await?;
            println!(
                "{:<8} {:<10} {:<22} {:<26} DESCRIPTION",
                "TOKEN", "TTL", "EXPIRES", "USAGES"
            );
            for s in list["items"].as_array().into_iter().flatten() {
                let expiration = unb64(&s["data"]["expiration"]);
                let ttl = chrono::DateTime::parse_from_rfc3339(&expiration)
                    .map(|t| {
                        let left = t.signed_duration_since(chrono::Utc::now());
                        if left.num_seconds() <= 0 {
                            "expired".to_string()
                        } else if left.num_hours() > 0 {
                            format!("{}h", left.num_hours())
                        } else {
                            format!("{}m", left.num_minutes().max(1))
                        }
                    })
                    .unwrap_or_else(|_| "<forever>".into());
                let usages: Vec<&str> = s["data"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter_map(|(k, _)| k.strip_prefix("usage-bootstrap-"))
                    .collect();
                println!(
                    "{:<8} {:<10} {:<22} {:<26} {}",
                    unb64(&s["data"]["token-id"]),
                    ttl,
                    if expiration.is_empty() {
                        "<never>".to_string()
                    } else {
                        expiration
                    },
                    usages.join(","),
                    unb64(&s["data"]["description"])
                );
            }
        }
        TokenCommand::Delete { tokens, kubeconfig } => {
            let client = wasmkube::client::Client::from_kubeconfig(&kubeconfig_path(kubeconfig))?;
            for t in tokens {
                let id = t
                    .rsplit("::")
                    .next()
                    .unwrap_or(&t)
                    .split('.')
                    .next()
                    .unwrap_or_default()
                    .to_string();
                client
                    .delete(
                        secrets,
                        Some("kube-system"),
                        &join::bootstrap_secret_name(&id),
                    )
                    .await
                    .with_context(|| format!("deleting token {id}"))?;
                println!("bootstrap token \"{id}\" deleted");
            }
        }
    }
    Ok(())
}
