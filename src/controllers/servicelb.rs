//! The service load balancer controller, as k3s's ServiceLB does on the
//! edge: a LoadBalancer Service is reachable on its node port on every node
//! (the agents' proxies listen there), so its `status.loadBalancer.ingress`
//! lists the addresses of the Ready nodes.
//!
//! [`ingress`] decides (pure).

use std::sync::Arc;

use serde_json::{json, Value};

use super::CancelToken;
use crate::api::resources;
use crate::client::runtime::{self, Cache, Change, Next, Reconcile, Watch, WorkQueue};
use crate::client::{Client, ClientError};

fn node_ready(node: &Value) -> bool {
    node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// `status.loadBalancer.ingress` of a LoadBalancer Service: the InternalIP
/// of every Ready, schedulable node, each once, in order.
pub fn ingress(nodes: &[Arc<Value>]) -> Value {
    let mut ips: Vec<String> = nodes
        .iter()
        .filter(|n| node_ready(n) && n["spec"]["unschedulable"] != true)
        .filter_map(|n| {
            n["status"]["addresses"]
                .as_array()?
                .iter()
                .find(|a| a["type"] == "InternalIP")?["address"]
                .as_str()
                .map(String::from)
        })
        .collect();
    ips.sort();
    ips.dedup();
    json!(ips
        .into_iter()
        .map(|ip| json!({"ip": ip, "ipMode": "VIP"}))
        .collect::<Vec<_>>())
}

struct Controller {
    client: Client,
    services: Arc<Cache>,
    nodes: Arc<Cache>,
}

impl Reconcile for Controller {
    async fn reconcile(&self, key: String) -> Result<Next, ClientError> {
        let Some(svc) = self.services.get_live(&key) else {
            return Ok(Next::Done);
        };
        let res = resources::lookup("services").expect("services are served");
        let want = if svc["spec"]["type"] == "LoadBalancer" {
            json!({"ingress": ingress(&self.nodes.all())})
        } else {
            json!({})
        };
        let have = &svc["status"]["loadBalancer"];
        if *have == want || (have.is_null() && want == json!({})) {
            return Ok(Next::Done);
        }
        runtime::update_status(&self.client, res, &svc, &json!({"loadBalancer": want})).await?;
        Ok(Next::Done)
    }
}

/// Run the service load balancer controller until `cancel`.
pub async fn run(client: Client, cancel: CancelToken) {
    let (services, nodes) = (Cache::new(), Cache::new());
    let queue = WorkQueue::new();
    let on_node = {
        let (queue, services) = (queue.clone(), services.clone());
        move |_: Change| {
            for s in services.all() {
                if s["spec"]["type"] == "LoadBalancer" {
                    queue.add(&runtime::key_of(&s));
                }
            }
        }
    };
    let watches = vec![
        Watch::new("services", &services, runtime::enqueue_self(&queue)),
        Watch::new("nodes", &nodes, on_node),
    ];
    let controller = Arc::new(Controller {
        client: client.clone(),
        services,
        nodes,
    });
    runtime::run_controller("servicelb", &client, watches, queue, 1, controller, cancel).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingress_lists_ready_schedulable_nodes_once() {
        let node = |name: &str, ip: &str, ready: &str, unsched: bool| {
            Arc::new(
                json!({"metadata": {"name": name}, "spec": {"unschedulable": unsched},
                "status": {"addresses": [{"type": "InternalIP", "address": ip}],
                    "conditions": [{"type": "Ready", "status": ready}]}}),
            )
        };
        let nodes = vec![
            node("b", "127.0.0.3", "True", false),
            node("a", "127.0.0.2", "True", false),
            node("c", "127.0.0.4", "Unknown", false),
            node("d", "127.0.0.5", "True", true),
            node("e", "127.0.0.2", "True", false),
        ];
        assert_eq!(
            ingress(&nodes),
            json!([{"ip": "127.0.0.2", "ipMode": "VIP"}, {"ip": "127.0.0.3", "ipMode": "VIP"}])
        );
    }
}
