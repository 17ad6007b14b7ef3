//! Controllers that run inside `wk server` (the controller manager). They use
//! only the public API, through [`crate::client::Client`].

pub mod aggregation;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod gc;
pub mod history;
pub mod hpa;
pub mod ingress;
pub mod job;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod replicaset;
pub mod rootca;
pub mod scheduler;
pub mod serviceaccount;
pub mod servicelb;
pub mod statefulset;

pub use crate::client::CancelToken;

/// A client under a controller's own identity: `ClientFor("deployment-controller")`
/// acts as ServiceAccount `kube-system/deployment-controller`, `"scheduler"`
/// as `system:kube-scheduler` (see `auth::policy`).
pub type ClientFor = std::sync::Arc<dyn Fn(&str) -> crate::client::Client + Send + Sync>;

/// Settings of the controller manager.
#[derive(Debug, Clone)]
pub struct Config {
    pub scheduling_strategy: scheduler::Strategy,
    /// Run the scheduler, the workload controllers and the garbage collector
    /// (the namespace controller always runs).
    pub workloads: bool,
    /// When nodes count as lost and their pods are evicted.
    pub node_timing: nodelifecycle::Timing,
    /// How often autoscalers re-read their metrics.
    pub hpa_sync_period: std::time::Duration,
    /// The server CA (PEM) published in every namespace as `kube-root-ca.crt`.
    pub root_ca: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            scheduling_strategy: scheduler::Strategy::default(),
            workloads: true,
            node_timing: nodelifecycle::Timing::default(),
            hpa_sync_period: std::time::Duration::from_secs(15),
            root_ca: String::new(),
        }
    }
}

/// The identity the controllers' shared informers list and watch under.
pub const INFORMERS: &str = "shared-informers";

/// Run the scheduler and every controller until `cancel` turns true, each
/// under its own identity. They share one informer per kind they all
/// watch whole ([`crate::client::runtime::SHARED_KINDS`]), so the process
/// holds one copy of each object, not one per controller.
pub async fn run(client_for: ClientFor, config: Config, cancel: CancelToken) {
    let informers = crate::client::runtime::Informers::new(client_for(INFORMERS), cancel.clone());
    let c = |name: &str| client_for(name).with_informers(informers.clone());
    let mut tasks = vec![
        tokio::spawn(namespace::run(c("namespace-controller"), cancel.clone())),
        tokio::spawn(nodeipam::run(c("node-ipam-controller"), cancel.clone())),
        tokio::spawn(serviceaccount::run(
            c("serviceaccount-controller"),
            cancel.clone(),
        )),
        tokio::spawn(rootca::run(
            c("root-ca-cert-publisher"),
            config.root_ca.clone(),
            cancel.clone(),
        )),
        tokio::spawn(aggregation::run(
            c("clusterrole-aggregation-controller"),
            cancel.clone(),
        )),
    ];
    if config.workloads {
        tasks.extend([
            tokio::spawn(gc::run(c("generic-garbage-collector"), cancel.clone())),
            tokio::spawn(replicaset::run(c("replicaset-controller"), cancel.clone())),
            tokio::spawn(deployment::run(c("deployment-controller"), cancel.clone())),
            tokio::spawn(job::run(c("job-controller"), cancel.clone())),
            tokio::spawn(disruption::run(c("disruption-controller"), cancel.clone())),
            tokio::spawn(endpoints::run(c("endpoint-controller"), cancel.clone())),
            tokio::spawn(servicelb::run(c("service-lb-controller"), cancel.clone())),
            tokio::spawn(ingress::run(c("ingress-status-controller"), cancel.clone())),
            tokio::spawn(hpa::run(
                c("horizontal-pod-autoscaler"),
                config.hpa_sync_period,
                cancel.clone(),
            )),
            tokio::spawn(daemonset::run(c("daemon-set-controller"), cancel.clone())),
            tokio::spawn(statefulset::run(
                c("statefulset-controller"),
                cancel.clone(),
            )),
            tokio::spawn(cronjob::run(c("cronjob-controller"), cancel.clone())),
            tokio::spawn(nodelifecycle::run(
                c("node-controller"),
                config.node_timing,
                cancel.clone(),
            )),
            tokio::spawn(scheduler::run(
                c("scheduler"),
                config.scheduling_strategy,
                cancel.clone(),
            )),
        ]);
    }
    for t in tasks {
        let _ = t.await;
    }
}
