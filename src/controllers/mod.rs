//! Controllers that run inside `wk server` (the controller manager). They use
//! only the public API, through [`crate::client::Client`].

pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod gc;
pub mod hpa;
pub mod ingress;
pub mod job;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod replicaset;
pub mod runtime;
pub mod scheduler;
pub mod servicelb;
pub mod statefulset;

/// Cancellation for controller loops: a watch channel that turns `true` on shutdown.
pub type CancelToken = tokio::sync::watch::Receiver<bool>;

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
}

impl Default for Config {
    fn default() -> Self {
        Self {
            scheduling_strategy: scheduler::Strategy::default(),
            workloads: true,
            node_timing: nodelifecycle::Timing::default(),
            hpa_sync_period: std::time::Duration::from_secs(15),
        }
    }
}

/// Run the scheduler and every controller until `cancel` turns true.
pub async fn run(client: crate::client::Client, config: Config, cancel: CancelToken) {
    let mut tasks = vec![
        tokio::spawn(namespace::run(client.clone(), cancel.clone())),
        tokio::spawn(nodeipam::run(client.clone(), cancel.clone())),
    ];
    if config.workloads {
        tasks.extend([
            tokio::spawn(gc::run(client.clone(), cancel.clone())),
            tokio::spawn(replicaset::run(client.clone(), cancel.clone())),
            tokio::spawn(deployment::run(client.clone(), cancel.clone())),
            tokio::spawn(job::run(client.clone(), cancel.clone())),
            tokio::spawn(endpoints::run(client.clone(), cancel.clone())),
            tokio::spawn(servicelb::run(client.clone(), cancel.clone())),
            tokio::spawn(ingress::run(client.clone(), cancel.clone())),
            tokio::spawn(hpa::run(
                client.clone(),
                config.hpa_sync_period,
                cancel.clone(),
            )),
            tokio::spawn(daemonset::run(client.clone(), cancel.clone())),
            tokio::spawn(statefulset::run(client.clone(), cancel.clone())),
            tokio::spawn(cronjob::run(client.clone(), cancel.clone())),
            tokio::spawn(nodelifecycle::run(
                client.clone(),
                config.node_timing,
                cancel.clone(),
            )),
            tokio::spawn(scheduler::run(
                client.clone(),
                config.scheduling_strategy,
                cancel.clone(),
            )),
        ]);
    }
    for t in tasks {
        let _ = t.await;
    }
}
