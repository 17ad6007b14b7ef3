//! `wkctl`: the kubectl-like command line. One file per verb; each verb has
//! a clap struct and an `execute` method. Errors print the way kubectl
//! prints them and exit 1.

// Errors end the process once; their size does not matter here.
#![allow(clippy::result_large_err)]

pub mod apply;
pub mod create;
pub mod delete;
pub mod describe;
pub mod exec;
pub mod get;
pub mod info;
pub mod logs;
pub mod manifest;
pub mod node;
pub mod printers;
pub mod rollout;
pub mod scale;
pub mod top;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde_json::Value;

use crate::api::resources::{self, Resource};
use crate::client::{Client, ClientError, Kubeconfig};

/// The wkctl command line.
#[derive(Parser)]
#[command(
    name = "wkctl",
    version,
    about = "wkctl controls the wasmkube cluster (kubectl-compatible verbs)"
)]
pub struct Cli {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then the server's default data dir).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The namespace scope for this request.
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Apply a configuration to resources from files, directories or stdin.
    Apply(apply::Apply),
    /// Display one or many resources.
    Get(get::Get),
    /// Show details of a specific resource, with its events.
    Describe(describe::Describe),
    /// Delete resources by file, by name, or by label selector.
    Delete(delete::Delete),
    /// Create a resource (namespace).
    #[command(subcommand)]
    Create(create::Create),
    /// Print the logs of a container in a pod.
    Logs(logs::Logs),
    /// Execute a command in a container (Wasm: a fresh instance of its module).
    Exec(exec::Exec),
    /// Set a new size for a Deployment, ReplicaSet or StatefulSet.
    Scale(scale::Scale),
    /// Mark a node unschedulable.
    Cordon(node::NodeName),
    /// Mark a node schedulable again.
    Uncordon(node::NodeName),
    /// Cordon a node and evict its pods so their controllers move them.
    Drain(node::Drain),
    /// Display resource (CPU/memory) usage of nodes or pods.
    #[command(subcommand)]
    Top(top::Top),
    /// Manage the rollout of a Deployment.
    #[command(subcommand)]
    Rollout(rollout::Rollout),
    /// Display the address of the control plane.
    ClusterInfo(info::ClusterInfo),
    /// Print the client and server version.
    Version(info::Version),
    /// Print the supported API resources on the server.
    ApiResources(info::ApiResources),
}

/// Errors a verb ends with.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("error: the server doesn't have a resource type {0:?}")]
    UnknownResource(String),
    #[error("error: {0}")]
    Usage(String),
    /// Some items failed; each was already reported.
    #[error("")]
    Reported,
    /// An exec'd command ended with this non-zero code (wkctl exits with it).
    #[error("command terminated with exit code {0}")]
    Exit(i32),
}

/// What every verb needs: the client and the namespace in scope.
pub struct Context {
    pub client: Client,
    pub namespace: String,
}

impl Context {
    fn new(cli: &Cli) -> Result<Self, CliError> {
        let path = cli
            .kubeconfig
            .clone()
            .or_else(|| std::env::var_os("KUBECONFIG").map(PathBuf::from))
            .unwrap_or_else(|| {
                crate::client::kubeconfig::kubeconfig_path(
                    &crate::client::kubeconfig::default_data_dir(),
                )
            });
        let kc = Kubeconfig::load(&path).map_err(ClientError::from)?;
        let namespace = cli
            .namespace
            .clone()
            .or(kc.namespace.clone())
            .unwrap_or_else(|| "default".into());
        Ok(Self {
            client: Client::from_config(&kc)?,
            namespace,
        })
    }

    /// The namespace argument for a resource: `None` for cluster-scoped kinds.
    pub fn ns_for(&self, res: &Resource) -> Option<&str> {
        res.namespaced.then_some(self.namespace.as_str())
    }
}

/// Resolve a resource type name or fail like kubectl.
pub fn resource(name: &str) -> Result<&'static Resource, CliError> {
    resources::lookup(name).ok_or_else(|| CliError::UnknownResource(name.into()))
}

/// `kind/name` as kubectl prints it: `pod/p1`, `deployment.apps/web`.
pub fn ref_name(res: &Resource, name: &str) -> String {
    if res.group.is_empty() {
        format!("{}/{name}", res.singular)
    } else {
        format!("{}.{}/{name}", res.singular, res.group)
    }
}

/// A pod argument, `NAME`, `pod/NAME` or `pods/NAME`: the name.
pub fn pod_name(arg: &str) -> &str {
    arg.strip_prefix("pod/")
        .or_else(|| arg.strip_prefix("pods/"))
        .unwrap_or(arg)
}

/// The name of an object.
pub fn name_of(obj: &Value) -> &str {
    crate::api::meta::name(obj)
}

/// Run the command line; returns the process exit code.
pub async fn run(cli: Cli) -> i32 {
    let result = async {
        let ctx = Context::new(&cli)?;
        match &cli.command {
            Command::Apply(c) => c.execute(&ctx).await,
            Command::Get(c) => c.execute(&ctx).await,
            Command::Describe(c) => c.execute(&ctx).await,
            Command::Delete(c) => c.execute(&ctx).await,
            Command::Create(c) => c.execute(&ctx).await,
            Command::Logs(c) => c.execute(&ctx).await,
            Command::Exec(c) => c.execute(&ctx).await,
            Command::Scale(c) => c.execute(&ctx).await,
            Command::Top(c) => c.execute(&ctx).await,
            Command::Rollout(c) => c.execute(&ctx).await,
            Command::Cordon(n) => node::cordon(&ctx, n).await,
            Command::Uncordon(n) => node::uncordon(&ctx, n).await,
            Command::Drain(c) => c.execute(&ctx).await,
            Command::ClusterInfo(c) => c.execute(&ctx).await,
            Command::Version(c) => c.execute(&ctx).await,
            Command::ApiResources(c) => c.execute(&ctx).await,
        }
    }
    .await;
    match result {
        Ok(()) => 0,
        Err(CliError::Reported) => 1,
        Err(CliError::Exit(code)) => {
            eprintln!("{}", CliError::Exit(code));
            code
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}
