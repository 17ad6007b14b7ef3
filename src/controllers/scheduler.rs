//! The scheduler: picks a node for every pod without `spec.nodeName` and
//! binds it through `pods/{name}/binding`.
//!
//! [`schedule`] is the decision, pure: filters (node Ready and schedulable,
//! the runtimes the pod needs, `nodeSelector` and required node affinity,
//! taints and tolerations, resource fit including the pod count, required
//! pod affinity and anti-affinity), then scores (bin packing or spreading
//! by allocation, preferred node affinity, spreading the replicas of one
//! owner), highest wins, ties by node name. A pod that fits nowhere gets
//! Kubernetes' "0/N nodes are available: ..." message.
//!
//! As kube-scheduler, at more than 100 nodes it stops looking once it has
//! found [`nodes_to_find`] feasible ones, and the next pod's search starts
//! where this one's stopped.
//!
//! [`run`] is the thin loop around it: reflectors for pods and nodes, a work
//! queue of pending pods, one worker (pods are placed one at a time, each
//! seeing the ones before), and a [`Placement`] kept by the pod watch: what
//! every node has given out, with "assumed" pods so a pod bound a moment
//! ago counts before the watch reports it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use super::CancelToken;
use crate::api::selector::{labels_of, LabelSelector};
use crate::api::{meta, quantity, resources};
use crate::client::events::Recorder;
use crate::client::runtime::{self, lock, Cache, Change, Next, Reconcile, Watch, WorkQueue};
use crate::client::{Client, ClientError};

/// The annotation naming the node a claim's local volume lives on.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";

/// The scheduler's name, as pods name it in `spec.schedulerName`.
pub const NAME: &str = "default-scheduler";

/// How allocation is scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Prefer the fullest node that fits: fill nodes one by one (bin packing,
    /// the default on edge fleets).
    #[default]
    MostAllocated,
    /// Prefer the emptiest node: spread load.
    LeastAllocated,
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "most-allocated" | "MostAllocated" => Ok(Strategy::MostAllocated),
            "least-allocated" | "LeastAllocated" => Ok(Strategy::LeastAllocated),
            other => Err(format!(
                "unknown scheduling strategy {other:?} (most-allocated or least-allocated)"
            )),
        }
    }
}

/// CPU and memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory: u64,
}

impl std::ops::Add for Resources {
    type Output = Resources;
    fn add(self, o: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis + o.cpu_millis,
            memory: self.memory + o.memory,
        }
    }
}

impl std::ops::Sub for Resources {
    type Output = Resources;
    fn sub(self, o: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(o.cpu_millis),
            memory: self.memory.saturating_sub(o.memory),
        }
    }
}

fn container_requests(c: &Value, defaults: bool) -> Resources {
    let resources = &c["resources"];
    let get = |k: &str| {
        resources["requests"][k]
            .as_str()
            .or_else(|| resources["limits"][k].as_str())
    };
    let cpu = get("cpu").and_then(|q| quantity::millicores(q).ok());
    let memory = get("memory").and_then(|q| quantity::bytes(q).ok());
    // the scheduler's non-zero defaults, used only for scoring (as kube-scheduler)
    Resources {
        cpu_millis: cpu.unwrap_or(if defaults { 100 } else { 0 }),
        memory: memory.unwrap_or(if defaults { 200 * 1024 * 1024 } else { 0 }),
    }
}

fn requests_with(pod: &Value, defaults: bool) -> Resources {
    let list = |k: &str| pod["spec"][k].as_array().map_or(&[][..], Vec::as_slice);
    let sum = list("containers")
        .iter()
        .fold(Resources::default(), |acc, c| {
            acc + container_requests(c, defaults)
        });
    // init containers run one at a time, before the others
    list("initContainers").iter().fold(sum, |acc, c| {
        let r = container_requests(c, false);
        Resources {
            cpu_millis: acc.cpu_millis.max(r.cpu_millis),
            memory: acc.memory.max(r.memory),
        }
    })
}

/// What a pod requests (limits stand in for absent requests).
pub fn pod_requests(pod: &Value) -> Resources {
    requests_with(pod, false)
}

/// The runtimes a pod's containers need: `spec.runtimeClassName` names one
/// (`wasm`, `oci`); without it, Wasm.
pub fn required_runtime(pod: &Value) -> String {
    pod["spec"]["runtimeClassName"]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or("wasm")
        .to_string()
}

/// A node as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub ready: bool,
    pub unschedulable: bool,
    pub taints: Vec<Value>,
    pub runtimes: Vec<String>,
    pub allocatable: Resources,
    pub max_pods: u64,
    /// `runtimes` among [`KNOWN_RUNTIMES`], as bits: the filter checks
    /// hundreds of nodes per pod without reading their strings.
    known_runtimes: u8,
    /// [`node_id`] of `name`: where [`Placement`] keeps this node's usage.
    id: u32,
}

/// A small number for each node name, the same everywhere in the process
/// for as long as it runs (a name that comes back gets its old number).
/// The scheduler reads the usage of hundreds of nodes per pod; by number
/// that is an index into a list, not a hash of the name and a compare of
/// strings scattered over the heap (about 3% of the server's CPU at 5,000
/// nodes).
fn node_id(name: &str) -> u32 {
    static IDS: std::sync::OnceLock<Mutex<Map<String, u32>>> = std::sync::OnceLock::new();
    let mut ids = lock(IDS.get_or_init(Default::default));
    if let Some(id) = ids.get(name) {
        return *id;
    }
    let id = u32::try_from(ids.len()).expect("fewer than 2^32 node names");
    ids.insert(name.to_string(), id);
    id
}

/// The runtimes a `wk` node can offer, in the order of their bits.
const KNOWN_RUNTIMES: [&str; 2] = ["wasm", "oci"];

fn runtime_bit(name: &str) -> Option<u8> {
    KNOWN_RUNTIMES
        .iter()
        .position(|r| *r == name)
        .map(|i| 1 << i)
}

impl NodeInfo {
    /// Whether the node offers the runtime `name`.
    pub fn offers(&self, name: &str) -> bool {
        self.offers_bit(runtime_bit(name), name)
    }

    /// [`Self::offers`], the runtime's bit found beforehand.
    fn offers_bit(&self, bit: Option<u8>, name: &str) -> bool {
        match bit {
            Some(bit) => self.known_runtimes & bit != 0,
            None => self.runtimes.iter().any(|r| r == name),
        }
    }

    pub fn from_node(node: &Value) -> Self {
        let alloc = &node["status"]["allocatable"];
        let q = |k: &str| alloc[k].as_str().unwrap_or("0");
        let runtimes: Vec<String> = node["metadata"]["annotations"]["node.wasmkube.io/runtimes"]
            .as_str()
            .unwrap_or("wasm")
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        let name = meta::name(node).to_string();
        NodeInfo {
            id: node_id(&name),
            known_runtimes: runtimes
                .iter()
                .filter_map(|r| runtime_bit(r))
                .fold(0, |bits, bit| bits | bit),
            name,
            labels: labels_of(node),
            ready: node["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True"),
            unschedulable: node["spec"]["unschedulable"].as_bool().unwrap_or(false),
            taints: node["spec"]["taints"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
            runtimes,
            allocatable: Resources {
                cpu_millis: quantity::millicores(q("cpu")).unwrap_or(0),
                memory: quantity::bytes(q("memory")).unwrap_or(0),
            },
            max_pods: q("pods").parse().unwrap_or(110),
        }
    }
}

/// A pod already on (or assumed onto) a node.
#[derive(Debug, Clone)]
pub struct Placed {
    pub node: String,
    pub pod: Arc<Value>,
}

/// Whether `tol` tolerates `taint`.
pub fn tolerates(tol: &Value, taint: &Value) -> bool {
    let effect = tol["effect"].as_str().unwrap_or("");
    if !effect.is_empty() && Some(effect) != taint["effect"].as_str() {
        return false;
    }
    let key = tol["key"].as_str().unwrap_or("");
    let exists = tol["operator"].as_str() == Some("Exists");
    if key.is_empty() {
        return exists;
    }
    if Some(key) != taint["key"].as_str() {
        return false;
    }
    exists || tol["value"].as_str().unwrap_or("") == taint["value"].as_str().unwrap_or("")
}

fn untolerated<'a>(
    tolerations: &[Value],
    taints: &'a [Value],
    effects: &[&str],
) -> Option<&'a Value> {
    taints.iter().find(|t| {
        effects.contains(&t["effect"].as_str().unwrap_or(""))
            && !tolerations.iter().any(|tol| tolerates(tol, t))
    })
}

/// One node selector requirement against a node's labels and name.
fn requirement_matches(
    req: &Value,
    labels: &BTreeMap<String, String>,
    field: Option<&str>,
) -> bool {
    let key = req["key"].as_str().unwrap_or("");
    let value = match field {
        Some(name) if key == "metadata.name" => Some(name.to_string()),
        Some(_) => None,
        None => labels.get(key).cloned(),
    };
    let values: Vec<&str> = req["values"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let number = |s: &str| s.parse::<i64>().ok();
    match req["operator"].as_str().unwrap_or("") {
        "In" => value.is_some_and(|v| values.contains(&v.as_str())),
        "NotIn" => value.is_none_or(|v| !values.contains(&v.as_str())),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => {
            matches!((value.as_deref().and_then(number), values.first().and_then(|v| number(v))), (Some(a), Some(b)) if a > b)
        }
        "Lt" => {
            matches!((value.as_deref().and_then(number), values.first().and_then(|v| number(v))), (Some(a), Some(b)) if a < b)
        }
        _ => false,
    }
}

/// A NodeSelectorTerm: its expressions and fields all match.
fn term_matches(term: &Value, node: &NodeInfo) -> bool {
    let all = |k: &str, field: Option<&str>| {
        term[k]
            .as_array()
            .into_iter()
            .flatten()
            .all(|r| requirement_matches(r, &node.labels, field))
    };
    let has_any = term["matchExpressions"]
        .as_array()
        .is_some_and(|a| !a.is_empty())
        || term["matchFields"]
            .as_array()
            .is_some_and(|a| !a.is_empty());
    has_any && all("matchExpressions", None) && all("matchFields", Some(&node.name))
}

/// A pod's node selector and required node affinity terms, found once per
/// pod rather than once per node looked at.
struct NodeAffinity<'a> {
    selector: Option<&'a serde_json::Map<String, Value>>,
    required: &'a [Value],
}

impl<'a> NodeAffinity<'a> {
    fn of(pod: &'a Value) -> Self {
        let spec = &pod["spec"];
        NodeAffinity {
            selector: spec["nodeSelector"].as_object().filter(|m| !m.is_empty()),
            required: spec["affinity"]["nodeAffinity"]
                ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
                .as_array()
                .map_or(&[][..], Vec::as_slice),
        }
    }

    fn admits(&self, node: &NodeInfo) -> bool {
        let selector_ok = self.selector.is_none_or(|m| {
            m.iter()
                .all(|(k, v)| node.labels.get(k).map(String::as_str) == v.as_str())
        });
        selector_ok
            && (self.required.is_empty() || self.required.iter().any(|t| term_matches(t, node)))
    }
}

/// The controller (owner) uid of a pod, for spreading replicas.
fn owner_uid(pod: &Value) -> Option<&str> {
    pod["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|o| o["controller"] == true)?["uid"]
        .as_str()
}

fn uid_of(pod: &Value) -> &str {
    pod["metadata"]["uid"].as_str().unwrap_or("")
}

fn is_finished(pod: &Value) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    )
}

/// A pod placed on (or assumed onto) a node, and what it takes from it.
#[derive(Debug, Clone)]
struct Slot {
    uid: String,
    node: String,
    /// [`node_id`] of `node`.
    node_id: u32,
    pod: Arc<Value>,
    requests: Resources,
    /// The requests with the scheduler's non-zero defaults, for scoring.
    scoring: Resources,
    owner: Option<String>,
    /// Placed by this scheduler; the watch has not shown it bound yet.
    assumed: bool,
}

/// The scheduler's own maps: looked up hundreds of times per pod placed
/// (once per node examined), so hashed with foldhash rather than SipHash
/// (still seeded per process).
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// What the pods placed on one node take from it.
#[derive(Debug, Default, Clone)]
struct Usage {
    pods: u64,
    requests: Resources,
    scoring: Resources,
    /// Pods per controller (owner) uid, for spreading replicas.
    owners: Map<String, u64>,
}

/// Every pod placed on a node, and what each node has given out: kept up
/// to date as pods change (kube-scheduler's cache), not summed again for
/// every pod to place. A pod the scheduler has just placed is *assumed*
/// onto its node until the watch shows it bound, so the next pod sees it.
#[derive(Debug, Default, Clone)]
pub struct Placement {
    /// By pod key (`namespace/name`).
    pods: Map<String, Slot>,
    /// By [`node_id`]; `None` for a node with no pod.
    nodes: Vec<Option<Usage>>,
}

impl Placement {
    /// The pods in `placed`, as the watch shows them bound.
    pub fn of(placed: &[Placed]) -> Self {
        let mut placement = Placement::default();
        for p in placed {
            placement.insert(runtime::key_of(&p.pod), &p.node, p.pod.clone(), false);
        }
        placement
    }

    fn insert(&mut self, key: String, node: &str, pod: Arc<Value>, assumed: bool) {
        self.remove(&key);
        let slot = Slot {
            uid: uid_of(&pod).to_string(),
            node: node.to_string(),
            node_id: node_id(node),
            requests: pod_requests(&pod),
            scoring: requests_with(&pod, true),
            owner: owner_uid(&pod).map(String::from),
            pod,
            assumed,
        };
        let i = slot.node_id as usize;
        if self.nodes.len() <= i {
            self.nodes.resize(i + 1, None);
        }
        let usage = self.nodes[i].get_or_insert_default();
        usage.pods += 1;
        usage.requests = usage.requests + slot.requests;
        usage.scoring = usage.scoring + slot.scoring;
        if let Some(owner) = &slot.owner {
            *usage.owners.entry(owner.clone()).or_default() += 1;
        }
        self.pods.insert(key, slot);
    }

    fn remove(&mut self, key: &str) {
        let Some(slot) = self.pods.remove(key) else {
            return;
        };
        let Some(entry) = self.nodes.get_mut(slot.node_id as usize) else {
            return;
        };
        let Some(usage) = entry else {
            return;
        };
        usage.pods -= 1;
        usage.requests = usage.requests - slot.requests;
        usage.scoring = usage.scoring - slot.scoring;
        if let Some(owner) = &slot.owner {
            if let Some(n) = usage.owners.get_mut(owner) {
                *n -= 1;
                if *n == 0 {
                    usage.owners.remove(owner);
                }
            }
        }
        if usage.pods == 0 {
            *entry = None;
        }
    }

    /// The watch shows `pod` (created, changed, or found by a relist).
    pub fn observe(&mut self, pod: &Arc<Value>) {
        let key = runtime::key_of(pod);
        let node = pod["spec"]["nodeName"].as_str().unwrap_or("");
        if is_finished(pod) {
            self.remove(&key);
        } else if !node.is_empty() {
            self.insert(key, node, pod.clone(), false);
        } else if !self.is_assumed(pod) {
            // unbound: only an assumption holds a place for it
            self.remove(&key);
        }
    }

    /// The watch shows `pod` deleted.
    pub fn deleted(&mut self, pod: &Value) {
        let key = runtime::key_of(pod);
        if self.pods.get(&key).is_some_and(|s| s.uid == uid_of(pod)) {
            self.remove(&key);
        }
    }

    /// Count `pod` on `node` from now on, before its binding is written.
    pub fn assume(&mut self, pod: &Arc<Value>, node: &str) {
        self.insert(runtime::key_of(pod), node, pod.clone(), true);
    }

    /// A binding failed: drop the assumption, unless the watch has shown
    /// the pod bound meanwhile.
    pub fn forget(&mut self, pod: &Value) {
        if self.is_assumed(pod) {
            self.remove(&runtime::key_of(pod));
        }
    }

    /// Whether `pod` (this uid) is assumed onto a node and not yet shown bound.
    pub fn is_assumed(&self, pod: &Value) -> bool {
        self.pods
            .get(&runtime::key_of(pod))
            .is_some_and(|s| s.assumed && s.uid == uid_of(pod))
    }

    #[cfg(test)]
    fn usage(&self, node: &str) -> Option<&Usage> {
        self.usage_of(node_id(node))
    }

    fn usage_of(&self, node_id: u32) -> Option<&Usage> {
        self.nodes.get(node_id as usize).and_then(Option::as_ref)
    }
}

/// A required pod (anti-)affinity term of the pod to place, evaluated once
/// against the placed pods.
struct Term<'a> {
    key: &'a str,
    /// The topology values (of `key`) of the nodes holding pods the term selects.
    values: HashSet<&'a str>,
    /// No placed pod matches and the pod matches its own term: the first of
    /// its group may go anywhere (affinity only).
    first_of_its_group: bool,
}

fn affinity_terms<'a>(
    pod: &'a Value,
    kind: &str,
    all: &[&'a NodeInfo],
    placement: &'a Placement,
) -> Vec<Term<'a>> {
    let terms = pod["spec"]["affinity"][kind]["requiredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    if terms.is_empty() {
        return Vec::new();
    }
    let nodes: HashMap<&str, &NodeInfo> = all.iter().map(|n| (n.name.as_str(), *n)).collect();
    terms
        .iter()
        .map(|term| {
            let key = term["topologyKey"]
                .as_str()
                .unwrap_or("kubernetes.io/hostname");
            let selector = LabelSelector::from_object(&term["labelSelector"]).ok();
            let namespaces: Vec<&str> = match term["namespaces"].as_array() {
                Some(ns) if !ns.is_empty() => ns.iter().filter_map(Value::as_str).collect(),
                _ => vec![meta::namespace(pod)],
            };
            let mut any = false;
            let mut values = HashSet::new();
            for slot in placement.pods.values() {
                if namespaces.contains(&meta::namespace(&slot.pod))
                    && selector
                        .as_ref()
                        .is_some_and(|s| s.matches_object(&slot.pod))
                {
                    any = true;
                    if let Some(v) = nodes
                        .get(slot.node.as_str())
                        .and_then(|n| n.labels.get(key))
                    {
                        values.insert(v.as_str());
                    }
                }
            }
            Term {
                key,
                values,
                first_of_its_group: !any
                    && selector.as_ref().is_some_and(|s| s.matches_object(pod)),
            }
        })
        .collect()
}

/// What the pod to place needs, worked out once rather than once per node.
struct Needs<'a> {
    pod: &'a Value,
    runtime: String,
    runtime_bit: Option<u8>,
    requests: Resources,
    scoring: Resources,
    tolerations: &'a [Value],
    node_affinity: NodeAffinity<'a>,
    affinity: Vec<Term<'a>>,
    anti_affinity: Vec<Term<'a>>,
}

impl<'a> Needs<'a> {
    fn of(pod: &'a Value, all: &[&'a NodeInfo], placement: &'a Placement) -> Self {
        let runtime = required_runtime(pod);
        Needs {
            pod,
            runtime_bit: runtime_bit(&runtime),
            runtime,
            requests: pod_requests(pod),
            scoring: requests_with(pod, true),
            tolerations: pod["spec"]["tolerations"]
                .as_array()
                .map_or(&[][..], Vec::as_slice),
            node_affinity: NodeAffinity::of(pod),
            affinity: affinity_terms(pod, "podAffinity", all, placement),
            anti_affinity: affinity_terms(pod, "podAntiAffinity", all, placement),
        }
    }
}

/// Why `node` cannot take the pod: empty if it can.
fn filter(needs: &Needs, node: &NodeInfo, usage: Option<&Usage>) -> Vec<String> {
    if node.unschedulable {
        return vec!["node(s) were unschedulable".into()];
    }
    if !node.ready {
        return vec!["node(s) were not ready".into()];
    }
    if !node.offers_bit(needs.runtime_bit, &needs.runtime) {
        return vec![format!(
            "node(s) did not offer the {} runtime",
            needs.runtime
        )];
    }
    if !needs.node_affinity.admits(node) {
        return vec!["node(s) didn't match Pod's node affinity/selector".into()];
    }
    if let Some(t) = untolerated(
        needs.tolerations,
        &node.taints,
        &["NoSchedule", "NoExecute"],
    ) {
        return vec![format!(
            "node(s) had untolerated taint {{{}: {}}}",
            t["key"].as_str().unwrap_or(""),
            t["value"].as_str().unwrap_or("")
        )];
    }
    let (pods, used) = usage.map_or((0, Resources::default()), |u| (u.pods, u.requests));
    let want = needs.requests;
    let mut reasons = Vec::new();
    if pods + 1 > node.max_pods {
        reasons.push("Too many pods".to_string());
    }
    if want.cpu_millis > 0 && used.cpu_millis + want.cpu_millis > node.allocatable.cpu_millis {
        reasons.push("Insufficient cpu".into());
    }
    if want.memory > 0 && used.memory + want.memory > node.allocatable.memory {
        reasons.push("Insufficient memory".into());
    }
    if !reasons.is_empty() {
        return reasons;
    }
    for term in &needs.affinity {
        if term.first_of_its_group {
            continue;
        }
        let here = node.labels.get(term.key);
        if !here.is_some_and(|h| term.values.contains(h.as_str())) {
            return vec!["node(s) didn't match pod affinity rules".into()];
        }
    }
    for term in &needs.anti_affinity {
        let here = node.labels.get(term.key);
        if here.is_some_and(|h| term.values.contains(h.as_str())) {
            return vec!["node(s) didn't match pod anti-affinity rules".into()];
        }
    }
    Vec::new()
}

fn scores(needs: &Needs, feasible: &[(&NodeInfo, Option<&Usage>)], strategy: Strategy) -> Vec<i64> {
    let allocation: Vec<i64> = feasible
        .iter()
        .map(|&(n, usage)| {
            let used = usage.map_or(Resources::default(), |u| u.scoring) + needs.scoring;
            let frac = |used: u64, alloc: u64| -> i64 {
                if alloc == 0 {
                    return 0;
                }
                let pct = (used.min(alloc) * 100 / alloc) as i64;
                match strategy {
                    Strategy::MostAllocated => pct,
                    Strategy::LeastAllocated => 100 - pct,
                }
            };
            (frac(used.cpu_millis, n.allocatable.cpu_millis)
                + frac(used.memory, n.allocatable.memory))
                / 2
        })
        .collect();
    let preferred = needs.pod["spec"]["affinity"]["nodeAffinity"]
        ["preferredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    let affinity: Vec<i64> = feasible
        .iter()
        .map(|&(n, _)| {
            preferred
                .iter()
                .filter(|p| term_matches(&p["preference"], n))
                .map(|p| p["weight"].as_i64().unwrap_or(0))
                .sum()
        })
        .collect();
    let max_affinity = affinity.iter().copied().max().unwrap_or(0);
    let owner = owner_uid(needs.pod);
    let siblings: Vec<i64> = feasible
        .iter()
        .map(|&(_, usage)| {
            owner
                .and_then(|o| usage?.owners.get(o))
                .map_or(0, |&c| c as i64)
        })
        .collect();
    let max_siblings = siblings.iter().copied().max().unwrap_or(0);
    (0..feasible.len())
        .map(|i| {
            let affinity = if max_affinity > 0 {
                affinity[i] * 100 / max_affinity
            } else {
                0
            };
            let spread = if max_siblings > 0 {
                (max_siblings - siblings[i]) * 100 / max_siblings
            } else {
                100
            };
            // kube-scheduler's default weights: resources 1, node affinity 2, spreading 2
            allocation[i] + 2 * affinity + 2 * spread
        })
        .collect()
}

/// The claims a pod's volumes name.
pub fn claims_of(pod: &Value) -> Vec<String> {
    pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| {
            v["persistentVolumeClaim"]["claimName"]
                .as_str()
                .map(String::from)
        })
        .collect()
}

/// Where each claim's volume lives: `namespace/claim` → `Some(node)` once
/// bound to a node-local volume, `None` while unbound. A claim missing from
/// the map does not exist.
pub type Claims = BTreeMap<String, Option<String>>;

/// How many feasible nodes to find before scoring them, as kube-scheduler's
/// adaptive `percentageOfNodesToScore`: every node of up to 100; of more,
/// 50% less one point per 125 nodes, at least 5% and at least 100 nodes.
/// The search starts where the last pod's stopped, so every node is looked
/// at in turn.
pub fn nodes_to_find(total: usize) -> usize {
    if total < 100 {
        return total;
    }
    let percent = 50usize.saturating_sub(total / 125).max(5);
    (total * percent / 100).max(100)
}

/// The node picked for a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub node: String,
    /// Nodes looked at: the next pod's search starts after them.
    pub examined: usize,
}

/// Pick a node for `pod`, or say why none fits, as kube-scheduler does:
/// "0/3 nodes are available: 1 Insufficient memory, 2 node(s) were unschedulable."
pub fn schedule(
    pod: &Value,
    nodes: &[NodeInfo],
    placed: &[Placed],
    strategy: Strategy,
) -> Result<String, String> {
    let placement = Placement::of(placed);
    schedule_with_claims(pod, nodes, &placement, strategy, &Claims::new(), 0).map(|c| c.node)
}

/// [`schedule`] against the scheduler's [`Placement`], placing a pod that
/// uses local volumes on their node; the search for feasible nodes starts
/// at `nodes[start]`.
pub fn schedule_with_claims<N: std::borrow::Borrow<NodeInfo>>(
    pod: &Value,
    nodes: &[N],
    placement: &Placement,
    strategy: Strategy,
    claims: &Claims,
    start: usize,
) -> Result<Choice, String> {
    let ns = meta::namespace(pod);
    let mut pinned: Option<&str> = None;
    for claim in claims_of(pod) {
        match claims.get(&format!("{ns}/{claim}")) {
            None => {
                return Err(format!(
                    "0/{} nodes are available: persistentvolumeclaim {claim:?} not found.",
                    nodes.len()
                ))
            }
            Some(Some(node)) => pinned = Some(node),
            Some(None) => {}
        }
    }
    let all: Vec<&NodeInfo> = nodes.iter().map(|n| n.borrow()).collect();
    let Some(node) = pinned else {
        return schedule_on(pod, &all, &all, placement, strategy, 0, start);
    };
    // only the volume's node can take the pod; the others fail for that reason
    let allowed: Vec<&NodeInfo> = all.iter().copied().filter(|n| n.name == node).collect();
    let conflicts = all.len() - allowed.len();
    if allowed.is_empty() {
        return Err(format!(
            "0/{} nodes are available: {conflicts} node(s) had volume node affinity conflict.",
            all.len()
        ));
    }
    schedule_on(pod, &all, &allowed, placement, strategy, conflicts, 0)
}

fn schedule_on(
    pod: &Value,
    all: &[&NodeInfo],
    candidates: &[&NodeInfo],
    placement: &Placement,
    strategy: Strategy,
    volume_conflicts: usize,
    start: usize,
) -> Result<Choice, String> {
    let needs = Needs::of(pod, all, placement);
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    if volume_conflicts > 0 {
        reasons.insert(
            "node(s) had volume node affinity conflict".into(),
            volume_conflicts,
        );
    }
    let wanted = nodes_to_find(candidates.len());
    let mut feasible = Vec::new();
    let mut examined = 0;
    for i in 0..candidates.len() {
        if feasible.len() >= wanted {
            break;
        }
        let n = candidates[(start + i) % candidates.len()];
        examined += 1;
        let usage = placement.usage_of(n.id);
        let why = filter(&needs, n, usage);
        if why.is_empty() {
            feasible.push((n, usage));
        }
        for r in why {
            *reasons.entry(r).or_default() += 1;
        }
    }
    if feasible.is_empty() {
        let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
        parts.sort();
        let detail = if parts.is_empty() {
            String::new()
        } else {
            format!(": {}", parts.join(", "))
        };
        return Err(format!("0/{} nodes are available{detail}.", all.len()));
    }
    let s = scores(&needs, &feasible, strategy);
    let best = (0..feasible.len())
        .max_by(|&a, &b| {
            s[a].cmp(&s[b])
                .then_with(|| feasible[b].0.name.cmp(&feasible[a].0.name))
        })
        .expect("at least one feasible node");
    Ok(Choice {
        node: feasible[best].0.name.clone(),
        examined,
    })
}

/// Whether the scheduler should place this pod.
pub fn wants(pod: &Value) -> bool {
    let spec = &pod["spec"];
    spec["nodeName"].as_str().unwrap_or("").is_empty()
        && matches!(spec["schedulerName"].as_str().unwrap_or(NAME), NAME | "")
        && !meta::is_deleting(pod)
        && !is_finished(pod)
}

struct Scheduler {
    client: Client,
    recorder: Recorder,
    pods: Arc<Cache>,
    claims: Arc<Cache>,
    strategy: Strategy,
    /// Claims bound by us that the cache may not show yet: `ns/claim` → node.
    bound_claims: Mutex<HashMap<String, String>>,
    /// Placed and assumed pods, kept by the pod watch.
    placement: Arc<Mutex<Placement>>,
    /// Every node as the scheduler sees it, kept by the node watch.
    nodes: Arc<Mutex<NodeTable>>,
    /// Where the next pod's search for feasible nodes starts.
    next_start: std::sync::atomic::AtomicUsize,
    /// Pods no node could take: tried again when pods or nodes change.
    unschedulable: Arc<Mutex<HashSet<String>>>,
    queue: Arc<WorkQueue>,
    /// Bindings written at once, as kube-scheduler's binding cycles run
    /// beside its scheduling cycle: the store commits them together.
    binds: Arc<tokio::sync::Semaphore>,
}

/// Every node, parsed once per change of that node.
#[derive(Default)]
struct NodeTable {
    by_name: BTreeMap<String, Arc<NodeInfo>>,
    /// `by_name`'s values, in name order; rebuilt after a change.
    list: Option<Arc<Vec<Arc<NodeInfo>>>>,
}

impl NodeTable {
    fn apply(&mut self, change: &Change) {
        let name = meta::name(change.object()).to_string();
        match change {
            Change::Applied(n) => {
                self.by_name.insert(name, Arc::new(NodeInfo::from_node(n)));
            }
            Change::Deleted(_) => {
                self.by_name.remove(&name);
            }
        }
        self.list = None;
    }

    fn list(&mut self) -> Arc<Vec<Arc<NodeInfo>>> {
        self.list
            .get_or_insert_with(|| Arc::new(self.by_name.values().cloned().collect()))
            .clone()
    }
}

/// Bindings in flight at once. The one scheduling worker waits for a
/// free slot, so this bounds the scheduling rate at about this many per
/// binding round trip (a Raft commit): 32 held 5,000 hollow nodes to about
/// 1,450–1,700 bindings/s, 256 reached 2,200 (docs/benchmarks.md).
const PARALLEL_BINDS: usize = 256;

/// Write `pod`'s binding to `node` (`pods/{name}/binding`).
async fn bind(client: &Client, pod: &Value, node: &str) -> Result<(), ClientError> {
    let (ns, name) = (meta::namespace(pod), meta::name(pod));
    let binding = json!({"apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": name, "namespace": ns, "uid": pod["metadata"]["uid"]},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
    let path = format!("/api/v1/namespaces/{ns}/pods/{name}/binding");
    client.request(Method::POST, &path, Some(&binding)).await?;
    Ok(())
}

/// The Scheduled event of a pod bound to `node` (queued, best effort).
fn scheduled(recorder: &Recorder, pod: &Value, node: &str) {
    let (ns, name) = (meta::namespace(pod), meta::name(pod));
    recorder.emit(
        pod,
        "Normal",
        "Scheduled",
        &format!("Successfully assigned {ns}/{name} to {node}"),
    );
}

impl Scheduler {
    /// Every claim and the node its volume lives on (the local-path
    /// provisioner binds a claim to the node of its first pod).
    fn claims_map(&self) -> Claims {
        let bound = self.bound_claims.lock().unwrap_or_else(|e| e.into_inner());
        self.claims
            .all()
            .iter()
            .map(|c| {
                let key = runtime::key_of(c);
                let node = c["metadata"]["annotations"][SELECTED_NODE]
                    .as_str()
                    .map(String::from)
                    .or_else(|| bound.get(&key).cloned());
                (key, node)
            })
            .collect()
    }

    /// Bind a claim to `node`: a directory there (`AGENT_DATA_DIR/claims/NS/NAME`)
    /// from now on; later pods using it are placed there too.
    async fn bind_claim(&self, ns: &str, claim: &str, node: &str) -> Result<(), ClientError> {
        let pvcs = resources::lookup("persistentvolumeclaims").expect("claims are served");
        let patch = json!({"metadata": {"annotations": {SELECTED_NODE: node,
            "volume.kubernetes.io/storage-provisioner": "wasmkube.io/local-path"}}});
        match self.client.merge_patch(pvcs, Some(ns), claim, &patch).await {
            Ok(c) => {
                let status = json!({"status": {"phase": "Bound",
                    "accessModes": c["spec"]["accessModes"],
                    "capacity": {"storage": c["spec"]["resources"]["requests"]["storage"].as_str().unwrap_or("0")}}});
                let path = format!("{}/status", pvcs.object_path(Some(ns), claim));
                self.client
                    .request_as(
                        Method::PATCH,
                        &path,
                        Some(&status),
                        "application/merge-patch+json",
                    )
                    .await?;
            }
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        }
        self.bound_claims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(format!("{ns}/{claim}"), node.to_string());
        Ok(())
    }
}

impl Reconcile for Scheduler {
    async fn reconcile(&self, key: String) -> Result<Next, ClientError> {
        let Some(pod) = self.pods.get(&key) else {
            lock(&self.unschedulable).remove(&key);
            return Ok(Next::Done);
        };
        if !wants(&pod) {
            lock(&self.unschedulable).remove(&key);
            return Ok(Next::Done);
        }
        if lock(&self.placement).is_assumed(&pod) {
            return Ok(Next::Done);
        }
        let nodes = lock(&self.nodes).list();
        let (ns, name) = (
            meta::namespace(&pod).to_string(),
            meta::name(&pod).to_string(),
        );
        let uses_claims = !claims_of(&pod).is_empty();
        let claims = if uses_claims {
            self.claims_map()
        } else {
            Claims::new()
        };
        let decision = {
            use std::sync::atomic::Ordering::Relaxed;
            let mut placement = lock(&self.placement);
            let start = self.next_start.load(Relaxed);
            let decision =
                schedule_with_claims(&pod, &nodes, &placement, self.strategy, &claims, start);
            if let Ok(choice) = &decision {
                self.next_start
                    .store((start + choice.examined) % nodes.len().max(1), Relaxed);
                // counted from now on, before the binding is written
                placement.assume(&pod, &choice.node);
            }
            decision
        };
        match decision {
            Ok(Choice { node, .. }) if !uses_claims => {
                lock(&self.unschedulable).remove(&key);
                let permit = self
                    .binds
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed");
                let (client, recorder) = (self.client.clone(), self.recorder.clone());
                let (placement, queue) = (self.placement.clone(), self.queue.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match bind(&client, &pod, &node).await {
                        Ok(()) => scheduled(&recorder, &pod, &node),
                        // deleted meanwhile, or bound by someone else
                        Err(e) if e.is_not_found() || e.code() == Some(409) => {
                            lock(&placement).forget(&pod);
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, pod = %key, "binding");
                            lock(&placement).forget(&pod);
                            queue.add_rate_limited(&key);
                        }
                    }
                });
                Ok(Next::Done)
            }
            Ok(Choice { node, .. }) => {
                lock(&self.unschedulable).remove(&key);
                match bind(&self.client, &pod, &node).await {
                    Ok(_) => {}
                    // deleted meanwhile, or bound by someone else: nothing to do
                    Err(e) if e.is_not_found() || e.code() == Some(409) => {
                        lock(&self.placement).forget(&pod);
                        return Ok(Next::Done);
                    }
                    Err(e) => {
                        lock(&self.placement).forget(&pod);
                        return Err(e);
                    }
                }
                for claim in claims_of(&pod) {
                    if matches!(claims.get(&format!("{ns}/{claim}")), Some(None)) {
                        self.bind_claim(&ns, &claim, &node).await?;
                    }
                }
                scheduled(&self.recorder, &pod, &node);
                Ok(Next::Done)
            }
            Err(message) => {
                lock(&self.unschedulable).insert(key.clone());
                let current = pod["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|c| c["type"] == "PodScheduled")
                    .and_then(|c| c["message"].as_str())
                    .unwrap_or("");
                if current != message {
                    let status = json!({"status": {"phase": "Pending", "conditions": [{
                        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                        "message": message, "lastProbeTime": null, "lastTransitionTime": meta::now()}]}});
                    let path = format!("/api/v1/namespaces/{ns}/pods/{name}/status");
                    match self
                        .client
                        .request_as(
                            Method::PATCH,
                            &path,
                            Some(&status),
                            "application/merge-patch+json",
                        )
                        .await
                    {
                        Ok(_) => {}
                        Err(e) if e.is_not_found() => return Ok(Next::Done),
                        Err(e) => return Err(e),
                    }
                    self.recorder
                        .emit(&pod, "Warning", "FailedScheduling", &message);
                }
                // retried when nodes or pods change, and now and then regardless
                Ok(Next::After(Duration::from_secs(30)))
            }
        }
    }
}

/// Run the scheduler until `cancel`.
pub async fn run(client: Client, strategy: Strategy, cancel: CancelToken) {
    let (pods, nodes) = (Cache::new(), Cache::new());
    let queue = WorkQueue::new();
    let unschedulable: Arc<Mutex<HashSet<String>>> = Arc::default();
    let placement: Arc<Mutex<Placement>> = Arc::default();
    let node_table: Arc<Mutex<NodeTable>> = Arc::default();
    // pods not tried yet are queued already: only the ones no node could
    // take need another look when something changes
    let requeue_pending = {
        let (unschedulable, queue) = (unschedulable.clone(), queue.clone());
        move || {
            for key in lock(&unschedulable).iter() {
                queue.add(key);
            }
        }
    };
    let on_pod = {
        let (queue, requeue, placement) =
            (queue.clone(), requeue_pending.clone(), placement.clone());
        move |c: Change| {
            match &c {
                Change::Applied(p) => lock(&placement).observe(p),
                Change::Deleted(p) => lock(&placement).deleted(p),
            }
            match &c {
                Change::Applied(p) if wants(p) => queue.add(&runtime::key_of(p)),
                // a pod bound, finished or deleted may free room for others
                _ => requeue(),
            }
        }
    };
    let requeue_claims = requeue_pending.clone();
    let on_node = {
        let node_table = node_table.clone();
        move |c: Change| {
            lock(&node_table).apply(&c);
            requeue_pending()
        }
    };
    let claims = Cache::new();
    let watches = vec![
        Watch::new("pods", &pods, on_pod),
        Watch::new("nodes", &nodes, on_node),
        Watch::new("persistentvolumeclaims", &claims, move |_c: Change| {
            requeue_claims()
        }),
    ];
    let scheduler = Arc::new(Scheduler {
        recorder: Recorder::new(client.clone(), NAME.to_string()),
        client: client.clone(),
        pods,
        claims,
        strategy,
        bound_claims: Mutex::default(),
        placement,
        nodes: node_table,
        next_start: Default::default(),
        unschedulable,
        queue: queue.clone(),
        binds: Arc::new(tokio::sync::Semaphore::new(PARALLEL_BINDS)),
    });
    // one worker: each pod is placed seeing the ones placed before it
    runtime::run_controller("scheduler", &client, watches, queue, 1, scheduler, cancel).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cpu: &str, memory: &str) -> NodeInfo {
        NodeInfo::from_node(&json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}, "annotations": {"node.wasmkube.io/runtimes": "wasm"}},
            "status": {"allocatable": {"cpu": cpu, "memory": memory, "pods": "10"},
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }))
    }

    fn pod(name: &str, cpu: &str, memory: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "default", "uid": name, "labels": {"app": name}},
               "spec": {"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": cpu, "memory": memory}}}]}})
    }

    fn with_claims(p: &Value, nodes: &[NodeInfo], claims: &Claims) -> Result<String, String> {
        let none = Placement::default();
        schedule_with_claims(p, nodes, &none, Strategy::MostAllocated, claims, 0).map(|c| c.node)
    }

    fn on(node: &str, p: Value) -> Placed {
        Placed {
            node: node.into(),
            pod: Arc::new(p),
        }
    }

    #[test]
    fn bin_packing_fills_one_node_before_the_next() {
        let nodes = vec![node("a", "2", "2Gi"), node("b", "2", "2Gi")];
        let mut placed = Vec::new();
        let mut order = Vec::new();
        for i in 0..6 {
            let p = pod(&format!("p{i}"), "500m", "256Mi");
            let n = schedule(&p, &nodes, &placed, Strategy::MostAllocated).unwrap();
            order.push(n.clone());
            placed.push(on(&n, p));
        }
        assert_eq!(order, ["a", "a", "a", "a", "b", "b"]);
        // least-allocated alternates instead
        let mut placed = Vec::new();
        let mut order = Vec::new();
        for i in 0..4 {
            let p = pod(&format!("p{i}"), "500m", "256Mi");
            let n = schedule(&p, &nodes, &placed, Strategy::LeastAllocated).unwrap();
            order.push(n.clone());
            placed.push(on(&n, p));
        }
        assert_eq!(order, ["a", "b", "a", "b"]);
    }

    #[test]
    fn an_unschedulable_pod_gets_the_reasons_per_node() {
        let mut cordoned = node("a", "4", "8Gi");
        cordoned.unschedulable = true;
        let mut tainted = node("b", "4", "8Gi");
        tainted.taints = vec![json!({"key": "dedicated", "value": "gpu", "effect": "NoSchedule"})];
        let small = node("c", "1", "1Gi");
        let mut notready = node("d", "4", "8Gi");
        notready.ready = false;
        let err = schedule(
            &pod("big", "2", "2Gi"),
            &[cordoned, tainted, small, notready],
            &[],
            Strategy::MostAllocated,
        )
        .unwrap_err();
        assert_eq!(
            err,
            "0/4 nodes are available: 1 Insufficient cpu, 1 Insufficient memory, \
             1 node(s) had untolerated taint {dedicated: gpu}, 1 node(s) were not ready, 1 node(s) were unschedulable."
        );
    }

    #[test]
    fn tolerations_selectors_affinity_and_runtimes_filter_nodes() {
        let mut gpu = node("gpu", "4", "8Gi");
        gpu.taints = vec![json!({"key": "dedicated", "value": "gpu", "effect": "NoSchedule"})];
        gpu.labels.insert("accel".into(), "yes".into());
        let plain = node("plain", "4", "8Gi");
        let nodes = vec![gpu, plain];
        let mut p = pod("x", "100m", "10Mi");
        assert_eq!(
            schedule(&p, &nodes, &[], Strategy::MostAllocated).unwrap(),
            "plain"
        );
        p["spec"]["tolerations"] = json!([{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]);
        p["spec"]["nodeSelector"] = json!({"accel": "yes"});
        assert_eq!(
            schedule(&p, &nodes, &[], Strategy::MostAllocated).unwrap(),
            "gpu"
        );
        let mut q = pod("y", "100m", "10Mi");
        q["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "accel", "operator": "DoesNotExist"}]}]}}});
        assert_eq!(
            schedule(&q, &nodes, &[], Strategy::MostAllocated).unwrap(),
            "plain"
        );
        q["spec"]["runtimeClassName"] = json!("oci");
        assert_eq!(
            schedule(&q, &nodes, &[], Strategy::MostAllocated).unwrap_err(),
            "0/2 nodes are available: 2 node(s) did not offer the oci runtime."
        );
        // a node offering both; and a runtime this build does not know of
        let both = NodeInfo::from_node(&json!({
            "metadata": {"name": "both", "annotations": {"node.wasmkube.io/runtimes": "wasm, oci,spin"}},
            "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "10"},
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }));
        let nodes = vec![nodes[0].clone(), nodes[1].clone(), both];
        assert_eq!(
            schedule(&q, &nodes, &[], Strategy::MostAllocated).unwrap(),
            "both"
        );
        q["spec"]["runtimeClassName"] = json!("spin");
        assert_eq!(
            schedule(&q, &nodes, &[], Strategy::MostAllocated).unwrap(),
            "both"
        );
        q["spec"]["runtimeClassName"] = json!("wasi");
        assert_eq!(
            schedule(&q, &nodes, &[], Strategy::MostAllocated).unwrap_err(),
            "0/3 nodes are available: 3 node(s) did not offer the wasi runtime."
        );
        assert!(tolerates(
            &json!({"operator": "Exists"}),
            &json!({"key": "any", "effect": "NoExecute"})
        ));
        assert!(!tolerates(
            &json!({"key": "k", "operator": "Exists", "effect": "NoSchedule"}),
            &json!({"key": "k", "effect": "NoExecute"})
        ));
    }

    #[test]
    fn pod_affinity_and_anti_affinity_use_the_hostname_topology() {
        let nodes = vec![node("a", "4", "8Gi"), node("b", "4", "8Gi")];
        let db = on("b", pod("db", "100m", "10Mi"));
        let mut web = pod("web", "100m", "10Mi");
        web["spec"]["affinity"] = json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "kubernetes.io/hostname"}]}});
        assert_eq!(
            schedule(
                &web,
                &nodes,
                std::slice::from_ref(&db),
                Strategy::MostAllocated
            )
            .unwrap(),
            "b"
        );
        let mut lonely = pod("lonely", "100m", "10Mi");
        lonely["spec"]["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "kubernetes.io/hostname"}]}});
        assert_eq!(
            schedule(
                &lonely,
                &nodes,
                std::slice::from_ref(&db),
                Strategy::MostAllocated
            )
            .unwrap(),
            "a"
        );
        let mut db2 = pod("db2", "100m", "10Mi");
        db2["metadata"]["labels"]["app"] = json!("db");
        let full = vec![db, on("a", db2)];
        assert_eq!(
            schedule(&lonely, &nodes, &full, Strategy::MostAllocated).unwrap_err(),
            "0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules."
        );
    }

    #[test]
    fn replicas_of_one_owner_spread_and_init_containers_count_as_kubernetes_does() {
        let nodes = vec![node("a", "8", "8Gi"), node("b", "8", "8Gi")];
        let owned = |name: &str| {
            let mut p = pod(name, "100m", "10Mi");
            p["metadata"]["ownerReferences"] =
                json!([{"uid": "rs-1", "controller": true, "kind": "ReplicaSet", "name": "rs"}]);
            p
        };
        let placed = vec![on("a", owned("r1"))];
        assert_eq!(
            schedule(&owned("r2"), &nodes, &placed, Strategy::MostAllocated).unwrap(),
            "b"
        );
        let mut p = pod("init", "1", "1Gi");
        p["spec"]["initContainers"] =
            json!([{"name": "i", "resources": {"requests": {"cpu": "3", "memory": "100Mi"}}}]);
        assert_eq!(
            pod_requests(&p),
            Resources {
                cpu_millis: 3000,
                memory: 1 << 30
            }
        );
    }

    #[test]
    fn a_pod_goes_where_its_local_volume_lives() {
        let nodes = vec![node("a", "4", "8Gi"), node("b", "4", "8Gi")];
        let mut p = pod("db-0", "100m", "10Mi");
        p["spec"]["volumes"] =
            json!([{"name": "data", "persistentVolumeClaim": {"claimName": "data-db-0"}}]);
        let mut claims = Claims::new();
        assert_eq!(
            with_claims(&p, &nodes, &claims).unwrap_err(),
            "0/2 nodes are available: persistentvolumeclaim \"data-db-0\" not found."
        );
        claims.insert("default/data-db-0".into(), None);
        assert_eq!(with_claims(&p, &nodes, &claims).unwrap(), "a");
        claims.insert("default/data-db-0".into(), Some("b".into()));
        assert_eq!(with_claims(&p, &nodes, &claims).unwrap(), "b");
        let mut full = nodes.clone();
        full[1].unschedulable = true;
        assert_eq!(
            with_claims(&p, &full, &claims).unwrap_err(),
            "0/2 nodes are available: 1 node(s) had volume node affinity conflict, 1 node(s) were unschedulable."
        );
    }

    #[test]
    fn an_assumed_pod_counts_until_the_watch_shows_it_bound_or_its_binding_fails() {
        let mut placement = Placement::default();
        let p = Arc::new(pod("p", "500m", "1Gi"));
        placement.assume(&p, "a");
        assert!(placement.is_assumed(&p));
        let used = |pl: &Placement| pl.usage("a").map(|u| (u.pods, u.requests));
        let one = Some((1, pod_requests(&p)));
        assert_eq!(used(&placement), one);
        // a status change of the still unbound pod keeps its place
        placement.observe(&p);
        assert_eq!(used(&placement), one);
        // the watch shows it bound: counted once, no longer assumed
        let mut bound = (*p).clone();
        bound["spec"]["nodeName"] = json!("a");
        let bound = Arc::new(bound);
        placement.observe(&bound);
        assert!(!placement.is_assumed(&bound));
        assert_eq!(used(&placement), one);
        // a late failure of its binding (409) forgets nothing the watch showed
        placement.forget(&p);
        assert_eq!(used(&placement), one);
        // finished pods free their node
        let mut done = (*bound).clone();
        done["status"]["phase"] = json!("Succeeded");
        placement.observe(&Arc::new(done));
        assert_eq!(used(&placement), None);

        // an assumption whose binding failed is dropped
        let q = Arc::new(pod("q", "1", "1Gi"));
        placement.assume(&q, "b");
        placement.forget(&q);
        assert_eq!(placement.usage("b").map(|u| u.pods), None);
        // a new pod of the same name is not the assumed one
        placement.assume(&q, "b");
        let mut again = (*q).clone();
        again["metadata"]["uid"] = json!("q-2");
        assert!(!placement.is_assumed(&again));
        placement.deleted(&again);
        assert!(
            placement.is_assumed(&q),
            "a delete of another uid removes nothing"
        );
        placement.deleted(&q);
        assert_eq!(placement.usage("b").map(|u| u.pods), None);
    }

    #[test]
    fn at_many_nodes_the_search_stops_at_kubernetes_share_and_goes_round() {
        assert_eq!(nodes_to_find(3), 3);
        assert_eq!(nodes_to_find(99), 99);
        assert_eq!(nodes_to_find(100), 100);
        assert_eq!(nodes_to_find(1000), 420);
        assert_eq!(nodes_to_find(5000), 500);
        assert_eq!(nodes_to_find(50_000), 2500);
        let nodes: Vec<NodeInfo> = (0..300)
            .map(|i| node(&format!("n{i:03}"), "4", "8Gi"))
            .collect();
        let none = Placement::default();
        let p = pod("p", "100m", "10Mi");
        let pick = |start| {
            schedule_with_claims(
                &p,
                &nodes,
                &none,
                Strategy::MostAllocated,
                &Claims::new(),
                start,
            )
            .unwrap()
        };
        // 144 of 300 are looked at, from the start, wrapping past the end
        let c = pick(0);
        assert_eq!(c.examined, 144);
        assert_eq!(c.node, "n000");
        let c = pick(250);
        assert_eq!(c.examined, 144);
        assert_eq!(c.node, "n000", "the window 250..300, 0..94 holds n000");
        assert_eq!(pick(10).node, "n010");
        // when one node fits, every node is looked at to find it
        let mut full = nodes.clone();
        for n in full.iter_mut().filter(|n| n.name != "n007") {
            n.unschedulable = true;
        }
        let c = schedule_with_claims(
            &p,
            &full,
            &none,
            Strategy::MostAllocated,
            &Claims::new(),
            100,
        )
        .unwrap();
        assert_eq!((c.node.as_str(), c.examined), ("n007", 300));
    }

    proptest::proptest! {
        /// Whatever happens to pods in whatever order, what the placement
        /// says each node has given out is the sum of the pods it holds.
        #[test]
        fn the_placement_sums_are_the_sums_of_its_pods(
            ops in proptest::collection::vec((0usize..6, 0u8..5, 0usize..3), 1..60),
        ) {
            let mut placement = Placement::default();
            for (i, op, n) in ops {
                let mut p = pod(&format!("p{i}"), &format!("{}m", 100 * (i + 1)), "64Mi");
                let node = ["a", "b", "c"][n];
                match op {
                    0 => placement.assume(&Arc::new(p), node),
                    1 => {
                        p["spec"]["nodeName"] = json!(node);
                        placement.observe(&Arc::new(p));
                    }
                    2 => placement.observe(&Arc::new(p)),
                    3 => placement.forget(&p),
                    _ => placement.deleted(&p),
                }
            }
            for node in ["a", "b", "c"] {
                let held: Vec<&Slot> = placement.pods.values().filter(|s| s.node == node).collect();
                let sum = held.iter().fold(Resources::default(), |a, s| a + pod_requests(&s.pod));
                let usage = placement.usage(node).cloned().unwrap_or_default();
                proptest::prop_assert_eq!(usage.pods, held.len() as u64);
                proptest::prop_assert_eq!(usage.requests, sum);
            }
        }
    }

    proptest::proptest! {
        /// Whatever the nodes and pods, a chosen node passes every filter and
        /// never ends up over its allocatable resources or pod count.
        #[test]
        fn a_chosen_node_always_fits(
            caps in proptest::collection::vec((1u64..8, 1u64..8, 1u64..5), 1..5),
            pods in proptest::collection::vec((0u64..3000, 0u64..3), 1..30),
        ) {
            let nodes: Vec<NodeInfo> = caps.iter().enumerate().map(|(i, (cpu, gi, max))| {
                let mut n = node(&format!("n{i}"), &cpu.to_string(), &format!("{gi}Gi"));
                n.max_pods = *max;
                n
            }).collect();
            let mut placed: Vec<Placed> = Vec::new();
            for (i, (milli, gi)) in pods.iter().enumerate() {
                let p = pod(&format!("p{i}"), &format!("{milli}m"), &format!("{gi}Gi"));
                if let Ok(n) = schedule(&p, &nodes, &placed, Strategy::MostAllocated) {
                    placed.push(on(&n, p));
                }
            }
            for n in &nodes {
                let on_n: Vec<&Placed> = placed.iter().filter(|p| p.node == n.name).collect();
                let used = on_n.iter().fold(Resources::default(), |a, p| a + pod_requests(&p.pod));
                proptest::prop_assert!(on_n.len() as u64 <= n.max_pods);
                proptest::prop_assert!(used.cpu_millis <= n.allocatable.cpu_millis);
                proptest::prop_assert!(used.memory <= n.allocatable.memory);
            }
        }
    }
}
