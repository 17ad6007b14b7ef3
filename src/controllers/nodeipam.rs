//! The node IPAM controller: gives every Node a pod address range of its own
//! (`spec.podCIDR`, `spec.podCIDRs`) out of the cluster range, as
//! kube-controller-manager's range allocator does. The agent allocates its
//! pods' addresses from that range, so pod IPs are unique in the cluster.
//!
//! [`next_free`] decides (pure).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use serde_json::json;

use super::runtime::{self, Cache, Next, Reconcile, Watch, WorkQueue};
use super::CancelToken;
use crate::api::{meta, resources};
use crate::client::{Client, ClientError};

/// The cluster's pod range and the size of each node's share. Inside
/// 127.0.0.0/8, so on one machine every pod address is local with no
/// set-up (docs/networking.md says how several machines route).
pub const CLUSTER_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(127, 64, 0, 0), 10);
/// Each node gets a /19: 8,190 pod addresses, 512 nodes.
pub const NODE_MASK: u8 = 19;

/// Parse `a.b.c.d/n`.
pub fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, bits) = s.split_once('/')?;
    let bits: u8 = bits.parse().ok().filter(|b| *b <= 32)?;
    Some((ip.parse().ok()?, bits))
}

/// The first node range of the cluster range not in `used`.
pub fn next_free(used: &[(Ipv4Addr, u8)]) -> Option<(Ipv4Addr, u8)> {
    let (base, bits) = CLUSTER_CIDR;
    let count = 1u32 << (NODE_MASK - bits);
    let step = 1u32 << (32 - NODE_MASK);
    (0..count)
        .map(|i| (Ipv4Addr::from(u32::from(base) + i * step), NODE_MASK))
        .find(|c| !used.contains(c))
}

struct Controller {
    client: Client,
    nodes: Arc<Cache>,
    /// Ranges handed out by this controller that its cache may not show yet.
    assigned: Mutex<HashMap<String, (Ipv4Addr, u8)>>,
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
            let mut used: Vec<(Ipv4Addr, u8)> = self
                .nodes
                .all()
                .iter()
                .filter_map(|n| n["spec"]["podCIDR"].as_str().and_then(parse_cidr))
                .collect();
            used.extend(assigned.iter().filter(|(n, _)| **n != key).map(|(_, c)| *c));
            let Some(cidr) = next_free(&used) else {
                tracing::warn!(node = %key, "no pod address range left for the node");
                return Ok(Next::Done);
            };
            assigned.insert(key.clone(), cidr);
            cidr
        };
        let text = format!("{}/{}", cidr.0, cidr.1);
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
    });
    // one worker: ranges are handed out one at a time
    runtime::run_controller("nodeipam", &client, watches, queue, 1, controller, cancel).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_handed_out_in_order_skipping_used_ones() {
        assert_eq!(
            next_free(&[]),
            Some((Ipv4Addr::new(127, 64, 0, 0), NODE_MASK))
        );
        let first = (Ipv4Addr::new(127, 64, 0, 0), NODE_MASK);
        assert_eq!(
            next_free(&[first]),
            Some((Ipv4Addr::new(127, 64, 32, 0), NODE_MASK))
        );
        assert_eq!(
            parse_cidr("127.64.32.0/19"),
            Some((Ipv4Addr::new(127, 64, 32, 0), 19))
        );
        assert_eq!(parse_cidr("nonsense"), None);
        // the range holds 512 nodes
        let all: Vec<_> = (0..512u32)
            .map(|i| {
                (
                    Ipv4Addr::from(u32::from(CLUSTER_CIDR.0) + (i << 13)),
                    NODE_MASK,
                )
            })
            .collect();
        assert_eq!(next_free(&all), None);
    }
}
