//! The Endpoints controller: for every Service with a selector, an
//! Endpoints object of the same name listing the selected pods' addresses,
//! ready ones under `addresses` and the others under `notReadyAddresses`,
//! with the Service's ports resolved against each pod (a `targetPort` may
//! name a container port). It follows readiness as it changes and goes away
//! with its Service.
//!
//! [`desired`] decides (pure).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};

use super::replicaset::is_ready;
use super::CancelToken;
use crate::api::selector::LabelSelector;
use crate::api::{meta, resources};
use crate::client::runtime::{self, Cache, Change, Next, Reconcile, Watch, WorkQueue};
use crate::client::{Client, ClientError};

/// The port a pod serves a Service port on: `targetPort` by number, or by
/// the name of one of its container ports; default the Service port.
fn target_port(port: &Value, pod: &Value) -> Option<i64> {
    match &port["targetPort"] {
        Value::Number(n) => n.as_i64(),
        Value::String(name) => name.parse().ok().or_else(|| {
            pod["spec"]["containers"]
                .as_array()?
                .iter()
                .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
                .find(|p| p["name"] == name.as_str())?["containerPort"]
                .as_i64()
        }),
        _ => port["port"].as_i64(),
    }
}

/// Whether `svc` selects pods: a Service without a selector (the
/// `kubernetes` Service, one with hand-written Endpoints) is not this
/// controller's, and no pod change concerns it.
pub fn selects_pods(svc: &Value) -> bool {
    svc["spec"]["selector"]
        .as_object()
        .is_some_and(|s| !s.is_empty())
}

/// The `subsets` of the Endpoints for `svc` among `pods` (None: the
/// Service has no selector, so its Endpoints are not ours to manage).
pub fn desired(svc: &Value, pods: &[Arc<Value>]) -> Option<Value> {
    if !selects_pods(svc) {
        return None;
    }
    let selector =
        LabelSelector::from_object(&json!({ "matchLabels": svc["spec"]["selector"] })).ok()?;
    let ports = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
    // pods grouped by the port numbers they resolve to, as Kubernetes does
    let mut subsets: BTreeMap<Vec<i64>, (Vec<Value>, Vec<Value>)> = BTreeMap::new();
    let mut selected: Vec<&Arc<Value>> = pods
        .iter()
        .filter(|p| selector.matches_object(p) && !meta::is_deleting(p))
        .filter(|p| {
            p["status"]["podIP"]
                .as_str()
                .is_some_and(|ip| !ip.is_empty())
        })
        .filter(|p| !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
        .collect();
    selected.sort_by_key(|p| meta::name(p).to_string());
    for p in selected {
        let Some(numbers) = ports
            .iter()
            .map(|port| target_port(port, p))
            .collect::<Option<Vec<i64>>>()
        else {
            continue;
        };
        let mut address = json!({"ip": p["status"]["podIP"], "nodeName": p["spec"]["nodeName"],
            "targetRef": {"kind": "Pod", "namespace": meta::namespace(p), "name": meta::name(p), "uid": p["metadata"]["uid"]}});
        // per-pod DNS names of a headless Service (StatefulSet pods)
        if let Some(host) = p["spec"]["hostname"].as_str().filter(|h| !h.is_empty()) {
            if p["spec"]["subdomain"] == svc["metadata"]["name"] {
                address["hostname"] = json!(host);
            }
        }
        let entry = subsets.entry(numbers).or_default();
        if is_ready(p) {
            entry.0.push(address);
        } else {
            entry.1.push(address);
        }
    }
    let subsets: Vec<Value> = subsets
        .into_iter()
        .map(|(numbers, (ready, not_ready))| {
            let ports: Vec<Value> = ports
                .iter()
                .zip(numbers)
                .map(|(p, n)| {
                    let mut port =
                        json!({"port": n, "protocol": p["protocol"].as_str().unwrap_or("TCP")});
                    if let Some(name) = p["name"].as_str() {
                        port["name"] = json!(name);
                    }
                    port
                })
                .collect();
            let mut s = json!({ "ports": ports });
            if !ready.is_empty() {
                s["addresses"] = json!(ready);
            }
            if !not_ready.is_empty() {
                s["notReadyAddresses"] = json!(not_ready);
            }
            s
        })
        .collect();
    Some(json!(subsets))
}

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const MANAGER: &str = "endpointslice-controller.k8s.io";

/// The discovery.k8s.io/v1 EndpointSlices for `svc` with Endpoints
/// `subsets`: one per subset (endpoints that share ports), named after the
/// Service (`name`, `name-1`, ...), with ready and not-ready endpoints.
pub fn slices(svc: &Value, subsets: &Value) -> Vec<Value> {
    let name = meta::name(svc);
    let mut out = Vec::new();
    for (i, subset) in subsets.as_array().into_iter().flatten().enumerate() {
        let endpoint = |a: &Value, ready: bool| {
            let mut e = json!({"addresses": [a["ip"]], "conditions": {"ready": ready, "serving": ready, "terminating": false},
                "nodeName": a["nodeName"], "targetRef": a["targetRef"]});
            if a["hostname"].is_string() {
                e["hostname"] = a["hostname"].clone();
            }
            e
        };
        let mut endpoints: Vec<Value> = Vec::new();
        for a in subset["addresses"].as_array().into_iter().flatten() {
            endpoints.push(endpoint(a, true));
        }
        for a in subset["notReadyAddresses"].as_array().into_iter().flatten() {
            endpoints.push(endpoint(a, false));
        }
        let slice_name = if i == 0 {
            name.to_string()
        } else {
            format!("{name}-{i}")
        };
        out.push(json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": slice_name,
                "namespace": meta::namespace(svc),
                "labels": {SERVICE_NAME_LABEL: name, MANAGED_BY: MANAGER},
                "ownerReferences": [runtime::owner_ref(svc, "v1", "Service")],
            },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": subset["ports"],
        }));
    }
    out
}

struct Controller {
    client: Client,
    services: Arc<Cache>,
    pods: Arc<Cache>,
    endpoints: Arc<Cache>,
    slices: Arc<Cache>,
}

impl Controller {
    /// Make the Service's EndpointSlices match `want`.
    async fn sync_slices(
        &self,
        ns: &str,
        svc_name: &str,
        want: Vec<Value>,
    ) -> Result<(), ClientError> {
        let res = resources::lookup("endpointslices").expect("endpointslices are served");
        let have: Vec<Arc<Value>> = self
            .slices
            .in_namespace(ns)
            .into_iter()
            .filter(|s| {
                s["metadata"]["labels"][SERVICE_NAME_LABEL] == svc_name
                    && s["metadata"]["labels"][MANAGED_BY] == MANAGER
            })
            .collect();
        for w in &want {
            let name = meta::name(w);
            match have.iter().find(|h| meta::name(h) == name) {
                None => match self.client.create(res, Some(ns), w).await {
                    Ok(_) => {}
                    Err(e) if e.code() == Some(409) => {}
                    Err(e) => return Err(e),
                },
                Some(h) if h["endpoints"] != w["endpoints"] || h["ports"] != w["ports"] => {
                    let mut next = (**h).clone();
                    next["endpoints"] = w["endpoints"].clone();
                    next["ports"] = w["ports"].clone();
                    match self.client.replace(res, Some(ns), name, &next).await {
                        Ok(_) => {}
                        Err(e) if e.is_not_found() || e.code() == Some(409) => {}
                        Err(e) => return Err(e),
                    }
                }
                Some(_) => {}
            }
        }
        for h in have {
            if !want.iter().any(|w| meta::name(w) == meta::name(&h)) {
                match self.client.delete(res, Some(ns), meta::name(&h)).await {
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

impl Reconcile for Controller {
    async fn reconcile(&self, key: String) -> Result<Next, ClientError> {
        let res = resources::lookup("endpoints").expect("endpoints are served");
        let (ns, name) = key.split_once('/').unwrap_or(("", &key));
        let current = self.endpoints.get(&key);
        let svc = self.services.get(&key).filter(|s| !meta::is_deleting(s));
        // the namespace's pods are gathered only for a Service that selects
        // some: with none, a pod change would copy out every pod for nothing
        let subsets = svc
            .as_ref()
            .filter(|s| selects_pods(s))
            .and_then(|s| desired(s, &self.pods.in_namespace(ns)));
        let want_slices = match (&svc, &subsets) {
            (Some(svc), Some(subsets)) => slices(svc, subsets),
            _ => Vec::new(),
        };
        self.sync_slices(ns, name, want_slices).await?;
        match (subsets, current) {
            (None, Some(ep)) if svc.is_none() => {
                // the Service is gone: so are its Endpoints
                match self.client.delete(res, Some(ns), meta::name(&ep)).await {
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
            }
            (Some(subsets), None) => {
                let ep = json!({"apiVersion": "v1", "kind": "Endpoints",
                    "metadata": {"name": name, "namespace": ns,
                        "labels": svc.as_ref().map(|s| s["metadata"]["labels"].clone()).unwrap_or(Value::Null)},
                    "subsets": subsets});
                match self.client.create(res, Some(ns), &ep).await {
                    Ok(_) => {}
                    Err(e) if e.code() == Some(409) => {
                        return Ok(Next::After(std::time::Duration::from_millis(100)))
                    }
                    Err(e) => return Err(e),
                }
            }
            (Some(subsets), Some(ep))
                if ep["subsets"] != subsets
                    && !(ep["subsets"].is_null() && subsets == json!([])) =>
            {
                let mut ep = (*ep).clone();
                ep["subsets"] = subsets;
                match self.client.replace(res, Some(ns), name, &ep).await {
                    Ok(_) => {}
                    Err(e) if e.is_not_found() || e.code() == Some(409) => {
                        return Ok(Next::After(std::time::Duration::from_millis(100)))
                    }
                    Err(e) => return Err(e),
                }
            }
            _ => {}
        }
        Ok(Next::Done)
    }
}

/// Run the Endpoints controller until `cancel`.
pub async fn run(client: Client, cancel: CancelToken) {
    let (services, pods, endpoints, slices) =
        (Cache::new(), Cache::new(), Cache::new(), Cache::new());
    let queue = WorkQueue::new();
    let on_pod = {
        let (queue, services) = (queue.clone(), services.clone());
        move |c: Change| {
            // any Service of the namespace with a selector may select it (or
            // have selected it); one without has no pods to follow
            for svc in services.in_namespace(meta::namespace(c.object())) {
                if selects_pods(&svc) {
                    queue.add(&runtime::key_of(&svc));
                }
            }
        }
    };
    let watches = vec![
        Watch::new("services", &services, runtime::enqueue_self(&queue)),
        Watch::new("pods", &pods, on_pod),
        Watch::new("endpoints", &endpoints, runtime::enqueue_self(&queue)),
        Watch::new("endpointslices", &slices, {
            let queue = queue.clone();
            move |c: Change| {
                let o = c.object();
                if let Some(svc) = o["metadata"]["labels"][SERVICE_NAME_LABEL].as_str() {
                    queue.add(&format!("{}/{svc}", meta::namespace(o)));
                }
            }
        }),
    ];
    let controller = Arc::new(Controller {
        client: client.clone(),
        services,
        pods,
        endpoints,
        slices,
    });
    runtime::run_controller("endpoints", &client, watches, queue, 2, controller, cancel).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: &str, ready: bool, port_name: &str, port: i64) -> Arc<Value> {
        Arc::new(
            json!({"metadata": {"name": name, "namespace": "d", "uid": name, "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": port_name, "containerPort": port}]}]},
            "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}}),
        )
    }

    #[test]
    fn ready_and_unready_pods_are_listed_apart_with_named_ports_resolved() {
        let svc = json!({"metadata": {"name": "web", "namespace": "d"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}});
        let pods = vec![
            pod("a", "127.1.0.2", true, "http", 8080),
            pod("b", "127.1.0.3", false, "http", 8080),
            pod("c", "127.1.0.4", true, "http", 9090),
            pod("no-ip", "", true, "http", 8080),
        ];
        let subsets = desired(&svc, &pods).unwrap();
        assert_eq!(
            subsets.as_array().unwrap().len(),
            2,
            "grouped by resolved port: {subsets}"
        );
        let s8080 = subsets
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["ports"][0]["port"] == 8080)
            .unwrap();
        assert_eq!(s8080["addresses"][0]["ip"], "127.1.0.2");
        assert_eq!(s8080["notReadyAddresses"][0]["ip"], "127.1.0.3");
        assert_eq!(
            s8080["ports"][0],
            json!({"port": 8080, "protocol": "TCP", "name": "http"})
        );
        assert_eq!(s8080["addresses"][0]["targetRef"]["name"], "a");
        let svc = json!({"metadata": {"name": "web", "namespace": "d", "uid": "u1"}});
        let sl = slices(&svc, &subsets);
        assert_eq!(sl.len(), 2);
        assert_eq!(sl[0]["metadata"]["name"], "web");
        assert_eq!(sl[1]["metadata"]["name"], "web-1");
        assert_eq!(sl[0]["metadata"]["labels"][SERVICE_NAME_LABEL], "web");
        let all: Vec<&Value> = sl
            .iter()
            .flat_map(|s| s["endpoints"].as_array().unwrap())
            .collect();
        assert_eq!(all.len(), 3);
        assert!(all
            .iter()
            .any(|e| e["addresses"][0] == "127.1.0.3" && e["conditions"]["ready"] == false));
        let headless_without_selector = json!({"spec": {"ports": [{"port": 80}]}});
        assert_eq!(desired(&headless_without_selector, &pods), None);
    }

    #[test]
    fn only_a_service_with_a_selector_follows_pods() {
        let kubernetes = json!({"metadata": {"name": "kubernetes", "namespace": "default"},
            "spec": {"ports": [{"name": "https", "port": 443, "targetPort": 6443}]}});
        assert!(!selects_pods(&kubernetes));
        assert!(!selects_pods(&json!({"spec": {"selector": {}}})));
        assert!(selects_pods(&json!({"spec": {"selector": {"app": "web"}}})));
    }
}
