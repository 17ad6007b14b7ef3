//! The node IPAM controller: gives every Node a pod address range of its own
//! (`spec.podCIDR`, `spec.podCIDRs`) out of the cluster range, as
//! kube-controller-manager's range allocator does. The agent allocates its
//! pods' addresses from that range, so pod IPs are unique in the cluster.
//!
//! [`next_free`] decides (pure).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::json;

use super::CancelToken;
use crate::api::{meta, resources};
use crate::client::runtime::{self, Cache, Next, Reconcile, Watch, WorkQueue};
use crate::client::{Client, ClientError};
use crate::network::{Cidr, NetworkConfig};

/// Parse `a.b.c.d/n`.
pub fn parse_cidr(s: &str) -> Option<Cidr> {
    s.parse().ok()
}

/// The first node range of `cfg`'s cluster range not in `used`.
pub fn next_free(cfg: &NetworkConfig, used: &[Cidr]) -> Option<Cidr> {
    let count = 1u64 << (cfg.node_mask - cfg.cluster_cidr.bits);
    let step = 1u64 << (32 - cfg.node_mask);
    (0..count)
        .map(|i| Cidr::new(cfg.cluster_cidr.nth((i * step) as u32), cfg.node_mask))
        .find(|c| !used.contains(c))
}

struct Controller {
    client: Client,
    nodes: Arc<Cache>,
    /// Ranges handed out by this controller that its cache may not show yet.
    assigned: Mutex<HashMap<String, Cidr>>,
    network: NetworkConfig,
}

impl Reconcile for Controller {
    async fn reconcile(&self, key: String) -> Result<Next, ClientError> {
        let Some(node) = self.nodes.get(&key) else {
            self.assigned
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
            return Ok(Next::Done);
        };
        if node["spec"]["podCIDR"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
        {
            return Ok(Next::Done);
        }
        let cidr = {
            let mut assigned = self.assigned.lock().unwrap_or_else(|e| e.into_inner());
            let mut used: Vec<Cidr> = self
                .nodes
                .all()
                .iter()
                .filter_map(|n| n["spec"]["podCIDR"].as_str().and_then(parse_cidr))
                .collect();
            used.extend(assigned.iter().filter(|(n, _)| **n != key).map(|(_, c)| *c));
            let Some(cidr) = next_free(&self.network, &used) else {
                tracing::warn!(node = %key, "no pod address range left for the node");
                return Ok(Next::Done);
            };
            assigned.insert(key.clone(), cidr);
            cidr
        };
        let text = cidr.to_string();
        let res = resources::lookup("nodes").expect("nodes are served");
        let patch = json!({"spec": {"podCIDR": text, "podCIDRs": [text]}});
        match self
            .client
            .merge_patch(res, None, meta::name(&node), &patch)
            .await
        {
            Ok(_) => Ok(Next::Done),
            Err(e) if e.is_not_found() => Ok(Next::Done),
            Err(e) => Err(e),
        }
    }
}

/// Run the node IPAM controller until `cancel`.
pub async fn run(client: Client, cancel: CancelToken) {
    let nodes = Cache::new();
    let queue = WorkQueue::new();
    let watches = vec![Watch::new("nodes", &nodes, runtime::enqueue_self(&queue))];
    let controller = Arc::new(Controller {
        client: client.clone(),
        nodes,
        assigned: Mutex::default(),
        network: crate::network::config(),
    });
    // one worker: ranges are handed out one at a time
    runtime::run_controller("nodeipam", &client, watches, queue, 1, controller, cancel).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_handed_out_in_order_skipping_used_ones() {
        let cfg = NetworkConfig::default();
        let first: Cidr = "127.64.0.0/19".parse().unwrap();
        assert_eq!(next_free(&cfg, &[]), Some(first));
        assert_eq!(
            next_free(&cfg, &[first]),
            Some("127.64.32.0/19".parse().unwrap())
        );
        assert_eq!(parse_cidr("nonsense"), None);
        // the default range holds 512 nodes
        let all: Vec<Cidr> = (0..512u32)
            .map(|i| Cidr::new(cfg.cluster_cidr.nth(i << 13), 19))
            .collect();
        assert_eq!(next_free(&cfg, &all), None);
    }
}
