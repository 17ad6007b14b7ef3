//! The Ingress status controller: for every Ingress the agents' gateways
//! serve (our IngressClass), `status.loadBalancer.ingress` lists the Ready
//! nodes' addresses, and a rule that names a missing Service or TLS Secret
//! gets a Warning event on the Ingress.
//!
//! [`problems`] decides (pure).

use std::sync::Arc;

use serde_json::{json, Value};

use super::CancelToken;
use crate::api::ingress::is_ours;
use crate::api::{meta, resources};
use crate::client::events::Recorder;
use crate::client::runtime::{self, Cache, Change, Next, Reconcile, Watch, WorkQueue};
use crate::client::{Client, ClientError};

/// Every Service backend an Ingress names.
fn backends(ing: &Value) -> Vec<&Value> {
    let mut out: Vec<&Value> = Vec::new();
    if ing["spec"]["defaultBackend"].is_object() {
        out.push(&ing["spec"]["defaultBackend"]);
    }
    for rule in ing["spec"]["rules"].as_array().into_iter().flatten() {
        for p in rule["http"]["paths"].as_array().into_iter().flatten() {
            out.push(&p["backend"]);
        }
    }
    out
}

/// The (reason, message) of each bad reference in `ing`.
pub fn problems(ing: &Value, services: &Cache, secrets: &Cache) -> Vec<(&'static str, String)> {
    let ns = meta::namespace(ing);
    let mut out = Vec::new();
    for b in backends(ing) {
        let Some(name) = b["service"]["name"].as_str() else {
            continue;
        };
        match services.get(&format!("{ns}/{name}")) {
            None => out.push((
                "ServiceNotFound",
                format!("backend service {ns}/{name} not found"),
            )),
            Some(svc) => {
                if crate::api::ingress::service_port(&svc, b).is_none() {
                    out.push((
                        "ServicePortNotFound",
                        format!("service {ns}/{name} has no port {}", b["service"]["port"]),
                    ));
                }
            }
        }
    }
    for tls in ing["spec"]["tls"].as_array().into_iter().flatten() {
        if let Some(secret) = tls["secretName"].as_str() {
            match secrets.get(&format!("{ns}/{secret}")) {
                None => out.push((
                    "SecretNotFound",
                    format!("TLS secret {ns}/{secret} not found"),
                )),
                Some(s) if s["type"] != "kubernetes.io/tls" => out.push((
                    "InvalidSecret",
                    format!("secret {ns}/{secret} is not of type kubernetes.io/tls"),
                )),
                Some(_) => {}
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

struct Controller {
    client: Client,
    recorder: Recorder,
    ingresses: Arc<Cache>,
    classes: Arc<Cache>,
    services: Arc<Cache>,
    secrets: Arc<Cache>,
    nodes: Arc<Cache>,
}

impl Reconcile for Controller {
    async fn reconcile(&self, key: String) -> Result<Next, ClientError> {
        let Some(ing) = self.ingresses.get_live(&key) else {
            return Ok(Next::Done);
        };
        if !is_ours(&ing, &self.classes.all()) {
            return Ok(Next::Done);
        }
        for (reason, message) in problems(&ing, &self.services, &self.secrets) {
            let _ = self
                .recorder
                .record(&ing, "Warning", reason, &message)
                .await;
        }
        let ips = super::servicelb::ingress(&self.nodes.all());
        let ingress: Vec<Value> = ips
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| json!({"ip": i["ip"]}))
            .collect();
        let res = resources::lookup("ingresses").expect("ingresses are served");
        runtime::update_status(
            &self.client,
            res,
            &ing,
            &json!({"loadBalancer": {"ingress": ingress}}),
        )
        .await?;
        Ok(Next::Done)
    }
}

/// Run the Ingress status controller until `cancel`.
pub async fn run(client: Client, cancel: CancelToken) {
    let (ingresses, classes, services, secrets, nodes) = (
        Cache::new(),
        Cache::new(),
        Cache::new(),
        Cache::new(),
        Cache::new(),
    );
    let queue = WorkQueue::new();
    let all = {
        let (queue, ingresses) = (queue.clone(), ingresses.clone());
        move || {
            let (queue, ingresses) = (queue.clone(), ingresses.clone());
            move |_: Change| {
                for i in ingresses.all() {
                    queue.add(&runtime::key_of(&i));
                }
            }
        }
    };
    let in_namespace = {
        let (queue, ingresses) = (queue.clone(), ingresses.clone());
        move || {
            let (queue, ingresses) = (queue.clone(), ingresses.clone());
            move |c: Change| {
                for i in ingresses.in_namespace(meta::namespace(c.object())) {
                    queue.add(&runtime::key_of(&i));
                }
            }
        }
    };
    let watches = vec![
        Watch::new("ingresses", &ingresses, runtime::enqueue_self(&queue)),
        Watch::new("ingressclasses", &classes, all()),
        Watch::new("nodes", &nodes, all()),
        Watch::new("services", &services, in_namespace()),
        Watch::new("secrets", &secrets, in_namespace()),
    ];
    let controller = Arc::new(Controller {
        recorder: Recorder::new(client.clone(), "ingress-controller"),
        client: client.clone(),
        ingresses,
        classes,
        services,
        secrets,
        nodes,
    });
    runtime::run_controller("ingress", &client, watches, queue, 1, controller, cancel).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_services_ports_and_secrets_are_named() {
        let services = Cache::new();
        let secrets = Cache::new();
        services.seed(json!({"metadata": {"name": "web", "namespace": "d"},
            "spec": {"ports": [{"name": "http", "port": 80}]}}));
        secrets.seed(json!({"metadata": {"name": "opaque", "namespace": "d"}, "type": "Opaque"}));
        let ing = json!({"metadata": {"name": "i", "namespace": "d"}, "spec": {
            "tls": [{"hosts": ["a"], "secretName": "gone"}, {"hosts": ["b"], "secretName": "opaque"}],
            "rules": [{"http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"name": "http"}}}},
                {"path": "/x", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 81}}}},
                {"path": "/y", "pathType": "Prefix", "backend": {"service": {"name": "nope", "port": {"number": 80}}}}]}}]}});
        let p = problems(&ing, &services, &secrets);
        let reasons: Vec<&str> = p.iter().map(|(r, _)| *r).collect();
        assert_eq!(
            reasons,
            vec![
                "InvalidSecret",
                "SecretNotFound",
                "ServiceNotFound",
                "ServicePortNotFound"
            ]
        );
        assert!(p
            .iter()
            .any(|(_, m)| m == "backend service d/nope not found"));
    }
}
