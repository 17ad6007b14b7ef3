//! Which Ingresses are ours and which Service port a backend names: what
//! the Ingress controller (status) and every agent's gateway (routing)
//! share. No I/O happens here.

use std::sync::Arc;

use serde_json::Value;

use super::meta;

/// Our IngressClass controller name.
pub const CONTROLLER: &str = "wasmkube.io/ingress";
/// The IngressClass the server creates (the default class).
pub const CLASS: &str = "wasmkube";
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// Whether `ing` is ours: its class is one of our IngressClasses, or it
/// names none and one of ours is the default.
pub fn is_ours(ing: &Value, classes: &[Arc<Value>]) -> bool {
    let ours = |c: &&Arc<Value>| c["spec"]["controller"] == CONTROLLER;
    let name = ing["spec"]["ingressClassName"]
        .as_str()
        .or_else(|| ing["metadata"]["annotations"]["kubernetes.io/ingress.class"].as_str());
    match name {
        Some(n) => classes.iter().filter(ours).any(|c| meta::name(c) == n),
        None => classes
            .iter()
            .filter(ours)
            .any(|c| c["metadata"]["annotations"][DEFAULT_CLASS_ANNOTATION] == "true"),
    }
}

/// The Service port (its `port`) a backend names, by number or by name.
pub fn service_port(svc: &Value, backend: &Value) -> Option<i64> {
    let port = &backend["service"]["port"];
    let ports = svc["spec"]["ports"].as_array()?;
    if let Some(n) = port["number"].as_i64() {
        return ports.iter().find(|p| p["port"] == n).map(|_| n);
    }
    let name = port["name"].as_str()?;
    ports
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["port"].as_i64())
}
