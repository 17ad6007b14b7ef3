//! Node registration and heartbeats: the Node object with capacity and
//! addresses, its Ready condition, and a coordination.k8s.io Lease renewed
//! in `kube-node-lease`.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::api::meta;
use crate::client::{Client, ClientError};

use super::{Agent, AgentConfig};
use crate::controllers::nodeipam::parse_cidr;

/// Lease duration advertised; the node lifecycle controller uses it.
pub const LEASE_SECONDS: u64 = 40;

fn micro_time() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

fn memory_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// The Node object this agent registers.
/// The Node this agent registers; `runtimes` are the names of the
/// container runtimes it offers (`wasm`, `oci`), which the scheduler
/// matches with a pod's `runtimeClassName`.
pub fn node_object(cfg: &AgentConfig, port: u16, runtimes: &[String]) -> Value {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let cpu = cfg.cpu.clone().unwrap_or_else(|| cpus.to_string());
    let memory = cfg
        .memory
        .clone()
        .unwrap_or_else(|| format!("{}Ki", memory_kib()));
    let capacity = json!({"cpu": cpu, "memory": memory, "pods": cfg.max_pods.to_string()});
    let now = meta::now();
    let mut node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": cfg.node_name,
            "labels": {
                "kubernetes.io/hostname": cfg.node_name,
                "kubernetes.io/arch": crate::apiserver::discovery::go_arch(),
                "kubernetes.io/os": "linux",
            },
            "annotations": {"node.wasmkube.io/runtimes": runtimes.join(",")},
        },
        "spec": {},
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "addresses": [{"type": "InternalIP", "address": cfg.advertise_ip}, {"type": "Hostname", "address": cfg.node_name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
            "nodeInfo": {
                "architecture": crate::apiserver::discovery::go_arch(),
                "operatingSystem": "linux",
                "kernelVersion": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
                "osImage": "wasmkube",
                "kubeletVersion": format!("v1.33.0+wasmkube-{}", env!("CARGO_PKG_VERSION")),
                "kubeProxyVersion": "",
                "containerRuntimeVersion": "wasmtime://48.0.8",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
            "conditions": [{
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "wasmkube agent is posting ready status",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }],
        },
    });
    for r in runtimes {
        node["metadata"]["labels"][format!("node.wasmkube.io/runtime-{r}")] = json!("true");
    }
    node
}

/// Create the Node, or take it over after a restart (spec and labels are kept).
pub async fn register(
    client: &Client,
    cfg: &AgentConfig,
    port: u16,
    runtimes: &[String],
) -> Result<(), ClientError> {
    let desired = node_object(cfg, port, runtimes);
    let path = format!("/api/v1/nodes/{}", cfg.node_name);
    match client
        .request(Method::POST, "/api/v1/nodes", Some(&desired))
        .await
    {
        Ok(_) => {}
        Err(e) if e.code() == Some(409) => {
            let patch = json!({"metadata": {"labels": desired["metadata"]["labels"], "annotations": desired["metadata"]["annotations"]}});
            client
                .request_as(
                    Method::PATCH,
                    &path,
                    Some(&patch),
                    "application/merge-patch+json",
                )
                .await?;
        }
        Err(e) => return Err(e),
    }
    client
        .request_as(
            Method::PATCH,
            &format!("{path}/status"),
            Some(&json!({"status": desired["status"]})),
            "application/merge-patch+json",
        )
        .await?;
    Ok(())
}

/// How often the node's Ready condition is written when nothing changed,
/// as the kubelet's `--node-status-report-frequency` (5 minutes): the
/// Lease is the heartbeat. Each write is a Raft entry fsynced on every
/// server, and on an edge device's flash that adds up.
pub const NODE_STATUS_REPORT_FREQUENCY: Duration = Duration::from_secs(300);

/// Renew the Lease; write the Ready condition when it is not what this
/// agent reports, or when `report` (its report frequency has passed).
/// Returns whether the node status was written.
pub async fn heartbeat(
    client: &Client,
    cfg: &AgentConfig,
    report: bool,
) -> Result<bool, ClientError> {
    let lease_path = format!(
        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{}",
        cfg.node_name
    );
    let spec = json!({"holderIdentity": cfg.node_name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": micro_time()});
    let patched = client
        .request_as(
            Method::PATCH,
            &lease_path,
            Some(&json!({"spec": spec})),
            "application/merge-patch+json",
        )
        .await;
    if matches!(&patched, Err(e) if e.is_not_found()) {
        let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": cfg.node_name}, "spec": spec});
        client
            .request(
                Method::POST,
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                Some(&lease),
            )
            .await?;
    } else {
        patched?;
    }
    let node = client
        .request(
            Method::GET,
            &format!("/api/v1/nodes/{}", cfg.node_name),
            None,
        )
        .await?;
    let now = meta::now();
    let mut conditions = node["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let current = conditions.iter().any(|c| {
        c["type"] == "Ready"
            && c["status"] == "True"
            && c["reason"] == "KubeletReady"
            && c["message"] == READY_MESSAGE
    });
    if current && !report {
        return Ok(false);
    }
    let mut found = false;
    for c in conditions.iter_mut().filter(|c| c["type"] == "Ready") {
        found = true;
        if c["status"] != "True" {
            c["lastTransitionTime"] = json!(now);
        }
        c["status"] = json!("True");
        c["reason"] = json!("KubeletReady");
        c["message"] = json!(READY_MESSAGE);
        c["lastHeartbeatTime"] = json!(now);
    }
    if !found {
        conditions.push(json!({"type": "Ready", "status": "True", "reason": "KubeletReady", "message": READY_MESSAGE, "lastHeartbeatTime": now, "lastTransitionTime": now}));
    }
    client
        .request_as(
            Method::PATCH,
            &format!("/api/v1/nodes/{}/status", cfg.node_name),
            Some(&json!({"status": {"conditions": conditions}})),
            "application/merge-patch+json",
        )
        .await?;
    Ok(true)
}

const READY_MESSAGE: &str = "wasmkube agent is posting ready status";

/// Register, then heartbeat every `cfg.heartbeat` until cancelled; failures
/// are retried (the control plane may be away: the node keeps running).
pub async fn run(agent: Arc<Agent>, port: u16, mut cancel: crate::controllers::CancelToken) {
    let (client, cfg) = (&agent.client, &agent.config);
    let runtimes: Vec<String> = agent
        .runtimes
        .iter()
        .map(|r| r.name().to_string())
        .collect();
    let mut registered = false;
    let mut have_cidr = false;
    let mut last_beat: Option<std::time::Instant> = None;
    let mut last_report: Option<std::time::Instant> = None;
    loop {
        if !registered {
            match register(client, cfg, port, &runtimes).await {
                Ok(()) => registered = true,
                Err(e) => tracing::debug!(error = %e, "node registration"),
            }
        }
        if registered && last_beat.is_none_or(|t| t.elapsed() >= cfg.heartbeat) {
            last_beat = Some(std::time::Instant::now());
            let report = last_report.is_none_or(|t| t.elapsed() >= NODE_STATUS_REPORT_FREQUENCY);
            match heartbeat(client, cfg, report).await {
                Ok(true) => last_report = Some(std::time::Instant::now()),
                Ok(false) => {}
                Err(e) => tracing::debug!(error = %e, "node heartbeat"),
            }
        }
        if registered && !have_cidr {
            // the node IPAM controller gives the range soon after registration
            match client
                .request(
                    Method::GET,
                    &format!("/api/v1/nodes/{}", cfg.node_name),
                    None,
                )
                .await
            {
                Ok(node) => {
                    if let Some(c) = node["spec"]["podCIDR"].as_str().and_then(parse_cidr) {
                        agent.set_pod_cidr(c);
                        have_cidr = true;
                    }
                }
                Err(e) => tracing::debug!(error = %e, "reading the node's pod range"),
            }
        }
        let wait = if registered && have_cidr {
            cfg.heartbeat
        } else if registered {
            Duration::from_millis(100).min(cfg.heartbeat)
        } else {
            Duration::from_secs(1)
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = cancel.changed() => return,
        }
    }
}
