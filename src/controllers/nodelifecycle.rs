//! Node lifecycle: a node whose agent stops renewing its Lease (and Ready
//! heartbeat) for the grace period becomes `Ready=Unknown` and gets the
//! `node.kubernetes.io/unreachable:NoExecute` taint; pods on it that do not
//! tolerate the taint are evicted (deleted) after their toleration period,
//! so their controllers replace them elsewhere. When the agent comes back
//! its heartbeat sets Ready again, the taint is removed, and the agent
//! finishes the evicted pods' deletion instead of running them twice.
//!
//! [`health`] and [`evictions`] decide (pure); [`run`] applies.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::scheduler::tolerates;
use super::CancelToken;
use crate::api::{meta, resources};
use crate::client::runtime::{self, Cache, Next, Reconcile, Watch, WorkQueue};
use crate::client::{Client, ClientError};

pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";

/// Timing of the node lifecycle controller.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// A node silent this long is unreachable (kube: `--node-monitor-grace-period`, 40 s).
    pub grace: Duration,
    /// Pods without a toleration for it are evicted after this long (60 s).
    pub eviction: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(40),
            eviction: Duration::from_secs(60),
        }
    }
}

fn parse_time(s: Option<&str>) -> Option<chrono::DateTime<chrono::Utc>> {
    s.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(Into::into)
}

/// The agent's last sign of life: its Lease renewal or its Ready heartbeat.
pub fn last_heartbeat(
    node: &Value,
    lease: Option<&Value>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    let ready = node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| parse_time(c["lastHeartbeatTime"].as_str()));
    let renewed = lease.and_then(|l| parse_time(l["spec"]["renewTime"].as_str()));
    ready.max(renewed)
}

/// Whether a node is lost: no heartbeat within `grace`.
pub fn is_lost(
    node: &Value,
    lease: Option<&Value>,
    now: chrono::DateTime<chrono::Utc>,
    grace: Duration,
) -> bool {
    match last_heartbeat(node, lease) {
        Some(t) => now.signed_duration_since(t).to_std().unwrap_or_default() > grace,
        None => false,
    }
}

/// When to look at a node again while it is well: just after its last
/// heartbeat (Ready condition or Lease) becomes `grace` old, which is the
/// first moment it can be lost; a renewal in between pushes the next look
/// further out. Kubernetes' controller instead checks every node every
/// `--node-monitor-period` (5 s); at 5,000 nodes a look every second per
/// node was 5,000 reconciles a second for nothing. Never heard from: after
/// `grace`. At least [`MIN_LOOK`] apart.
pub fn next_look(
    node: &Value,
    lease: Option<&Value>,
    now: chrono::DateTime<chrono::Utc>,
    grace: Duration,
) -> Duration {
    let until_lost = match last_heartbeat(node, lease) {
        Some(t) => chrono::Duration::from_std(grace)
            .ok()
            .and_then(|g| t.checked_add_signed(g))
            .and_then(|lost_at| (lost_at - now).to_std().ok())
            .unwrap_or_default(),
        None => grace,
    };
    (until_lost + Duration::from_millis(1)).max(MIN_LOOK)
}

/// Shortest wait between looks at one node; also the pace while a node is
/// lost or tainted (evictions come due by the clock).
pub const MIN_LOOK: Duration = Duration::from_secs(1);

fn has_unreachable_taint(node: &Value) -> Option<&Value> {
    node["spec"]["taints"]
        .as_array()?
        .iter()
        .find(|t| t["key"] == UNREACHABLE && t["effect"] == "NoExecute")
}

/// Which of `pods` (on a node carrying `taint` since its `timeAdded`) are
/// due for eviction at `now`: those without a toleration after `default`,
/// those tolerating it for N seconds after N; those tolerating it forever never.
pub fn evictions<'a>(
    taint: &Value,
    pods: &'a [Arc<Value>],
    now: chrono::DateTime<chrono::Utc>,
    default: Duration,
) -> Vec<&'a Arc<Value>> {
    let Some(added) = parse_time(taint["timeAdded"].as_str()) else {
        return Vec::new();
    };
    let since = now
        .signed_duration_since(added)
        .to_std()
        .unwrap_or_default();
    pods.iter()
        .filter(|p| !meta::is_deleting(p))
        .filter(|p| {
            let tolerations = p["spec"]["tolerations"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            match tolerations.iter().find(|t| tolerates(t, taint)) {
                None => since >= default,
                Some(t) => match t["tolerationSeconds"].as_i64() {
                    None => false,
                    Some(n) => since >= Duration::from_secs(n.max(0) as u64),
                },
            }
        })
        .collect()
}

struct Controller {
    client: Client,
    nodes: Arc<Cache>,
    leases: Arc<Cache>,
    pods: Arc<Cache>,
    timing: Timing,
}

impl Reconcile for Controller {
    async fn reconcile(&self, key: String) -> Result<Next, ClientError> {
        let Some(node) = self.nodes.get(&key) else {
            return Ok(Next::Done);
        };
        let nodes = resources::lookup("nodes").expect("nodes are served");
        let name = meta::name(&node).to_string();
        let lease = self.leases.get(&format!("kube-node-lease/{name}"));
        let now = chrono::Utc::now();
        let lost = is_lost(&node, lease.as_deref(), now, self.timing.grace);
        let tainted = has_unreachable_taint(&node).cloned();
        let mut taints: Vec<Value> = node["spec"]["taints"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if lost {
            let ready_unknown = node["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "Unknown");
            if !ready_unknown {
                let mut conditions = node["status"]["conditions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                for c in conditions.iter_mut().filter(|c| c["type"] == "Ready") {
                    c["status"] = json!("Unknown");
                    c["reason"] = json!("NodeStatusUnknown");
                    c["message"] = json!("Kubelet stopped posting node status.");
                    c["lastTransitionTime"] = json!(meta::now());
                }
                let path = format!("{}/status", nodes.object_path(None, &name));
                self.client
                    .request_as(
                        reqwest::Method::PATCH,
                        &path,
                        Some(&json!({"status": {"conditions": conditions}})),
                        "application/merge-patch+json",
                    )
                    .await?;
            }
            match &tainted {
                None => {
                    taints.push(json!({"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": meta::now()}));
                    self.client
                        .merge_patch(nodes, None, &name, &json!({"spec": {"taints": taints}, "metadata": {"resourceVersion": node["metadata"]["resourceVersion"]}}))
                        .await?;
                }
                Some(taint) => {
                    let on_node: Vec<Arc<Value>> = self
                        .pods
                        .all()
                        .into_iter()
                        .filter(|p| p["spec"]["nodeName"] == name.as_str())
                        .collect();
                    let pods = resources::lookup("pods").expect("pods are served");
                    for p in evictions(taint, &on_node, now, self.timing.eviction) {
                        tracing::info!(pod = %meta::name(p), node = %name, "evicting a pod from an unreachable node");
                        match self
                            .client
                            .delete(pods, Some(meta::namespace(p)), meta::name(p))
                            .await
                        {
                            Ok(_) => {}
                            Err(e) if e.is_not_found() => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
            }
        } else if tainted.is_some() {
            taints.retain(|t| t["key"] != UNREACHABLE);
            let taints = if taints.is_empty() {
                Value::Null
            } else {
                json!(taints)
            };
            self.client
                .merge_patch(nodes, None, &name, &json!({"spec": {"taints": taints}, "metadata": {"resourceVersion": node["metadata"]["resourceVersion"]}}))
                .await?;
        }
        // level-triggered on a clock: while lost or tainted, every second
        // (evictions come due); while well, when it could first be lost
        if lost || tainted.is_some() {
            Ok(Next::After(MIN_LOOK))
        } else {
            Ok(Next::After(next_look(
                &node,
                lease.as_deref(),
                now,
                self.timing.grace,
            )))
        }
    }
}

/// Run the node lifecycle controller until `cancel`.
pub async fn run(client: Client, timing: Timing, cancel: CancelToken) {
    let (nodes, leases, pods) = (Cache::new(), Cache::new(), Cache::new());
    let queue = WorkQueue::new();
    let watches = vec![
        Watch::new("nodes", &nodes, runtime::enqueue_self(&queue)),
        Watch::new("leases", &leases, |_| {}),
        Watch::new("pods", &pods, |_| {}),
    ];
    let controller = Arc::new(Controller {
        client: client.clone(),
        nodes,
        leases,
        pods,
        timing,
    });
    runtime::run_controller(
        "node-lifecycle",
        &client,
        watches,
        queue,
        2,
        controller,
        cancel,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs_ago: i64) -> String {
        (chrono::Utc::now() - chrono::Duration::seconds(secs_ago))
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    }

    #[test]
    fn a_node_is_lost_once_both_heartbeats_are_older_than_the_grace_period() {
        let node = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": at(50)}]}});
        let fresh_lease = json!({"spec": {"renewTime": at(5)}});
        let old_lease = json!({"spec": {"renewTime": at(45)}});
        let now = chrono::Utc::now();
        let grace = Duration::from_secs(40);
        assert!(!is_lost(&node, Some(&fresh_lease), now, grace));
        assert!(is_lost(&node, Some(&old_lease), now, grace));
        assert!(is_lost(&node, None, now, grace));
        assert!(
            !is_lost(&json!({}), None, now, grace),
            "never heard from: not judged"
        );
    }

    #[test]
    fn a_well_node_is_looked_at_again_when_it_could_first_be_lost() {
        let now = chrono::Utc::now();
        let grace = Duration::from_secs(40);
        let node = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": at(50)}]}});
        let lease = json!({"spec": {"renewTime": at(10)}});
        let wait = next_look(&node, Some(&lease), now, grace);
        // the lease (10 s old, to the second) is the newer heartbeat: lost in about 30 s
        assert!(
            wait > Duration::from_secs(29) && wait <= Duration::from_secs(31),
            "{wait:?}"
        );
        assert!(!is_lost(
            &node,
            Some(&lease),
            now + wait - Duration::from_secs(1),
            grace
        ));
        assert!(is_lost(
            &node,
            Some(&lease),
            now + wait + Duration::from_secs(1),
            grace
        ));
        // lost already, or its heartbeat from the future: never less than a second
        assert_eq!(next_look(&node, None, now, grace), MIN_LOOK);
        let ahead = json!({"spec": {"renewTime": at(-100)}});
        assert!(next_look(&node, Some(&ahead), now, grace) >= grace);
        // never heard from
        assert_eq!(
            next_look(&json!({}), None, now, grace),
            grace + Duration::from_millis(1)
        );
    }

    #[test]
    fn pods_are_evicted_after_their_toleration_period() {
        let taint = json!({"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": at(30)});
        let pod = |name: &str, tolerations: Value| {
            Arc::new(json!({"metadata": {"name": name}, "spec": {"tolerations": tolerations}}))
        };
        let pods = vec![
            pod("plain", json!([])),
            pod(
                "patient",
                json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]),
            ),
            pod(
                "brief",
                json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 10}]),
            ),
            pod("forever", json!([{"operator": "Exists"}])),
        ];
        let now = chrono::Utc::now();
        let names = |v: Vec<&Arc<Value>>| {
            v.iter()
                .map(|p| meta::name(p).to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(evictions(&taint, &pods, now, Duration::from_secs(60))),
            ["brief"]
        );
        assert_eq!(
            names(evictions(&taint, &pods, now, Duration::from_secs(20))),
            ["plain", "brief"]
        );
    }
}
