//! Service address allocation: cluster IPs and node ports.
//!
//! Each allocated cluster IP is an `IPAddress` object (networking.k8s.io/v1,
//! named by the address, as Kubernetes' MultiCIDRServiceAllocator keeps them)
//! and each node port an internal record. Both are written in the same
//! all-or-nothing transaction as the Service that holds them, with a
//! must-not-exist precondition, so two Services can never get the same
//! address or port however their writes race, and deleting the Service
//! releases them in the same transaction.

use std::net::Ipv4Addr;

use rand::Rng;
use serde_json::{json, Value};

use crate::api::error::{ApiError, FieldError};
use crate::api::{meta, resources};
use crate::store::{Cache, Precondition, Request};

/// Kubernetes' default node port range.
pub const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

/// Store key prefix of node port records (not served by the API).
const NODE_PORT_PREFIX: &str = "internal/nodeports//";

fn ip_key(ip: &str) -> String {
    resources::lookup("ipaddresses.networking.k8s.io")
        .map(|r| r.key("", ip))
        .unwrap_or_else(|| format!("networking.k8s.io/ipaddresses//{ip}"))
}

fn node_port_key(port: u16) -> String {
    format!("{NODE_PORT_PREFIX}{port}")
}

/// Offsets of the Service range that may be handed out: not the network
/// address, the `kubernetes` Service's (1), the cluster DNS's (10), or the
/// broadcast address.
fn assignable(range: crate::network::Cidr) -> impl Iterator<Item = u32> {
    (2..range.size().saturating_sub(1) as u32).filter(|o| *o != 10)
}

fn create(key: String, object: Value) -> Request {
    Request::Put {
        key,
        object: std::sync::Arc::new(object),
        precondition: Precondition {
            exists: Some(false),
            ..Default::default()
        },
    }
}

fn delete(key: String) -> Request {
    Request::Delete {
        key,
        precondition: Precondition {
            exists: Some(true),
            ..Default::default()
        },
    }
}

fn owner(svc: &Value) -> String {
    format!("{}/{}", meta::namespace(svc), meta::name(svc))
}

fn ip_object(ip: &str, svc: &Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IPAddress",
        "metadata": {
            "name": ip,
            "uid": uuid::Uuid::new_v4().to_string(),
            "creationTimestamp": meta::now(),
            "labels": {
                "ipaddress.kubernetes.io/ip-family": "IPv4",
                "ipaddress.kubernetes.io/managed-by": "ipallocator.k8s.io",
            },
        },
        "spec": {"parentRef": {
            "group": "",
            "resource": "services",
            "namespace": meta::namespace(svc),
            "name": meta::name(svc),
        }},
    })
}

fn holds_ip(cache: &Cache, ip: &str, svc: &Value) -> bool {
    cache.get(&ip_key(ip)).is_some_and(|o| {
        o.pointer("/spec/parentRef/namespace")
            .and_then(Value::as_str)
            == Some(meta::namespace(svc))
            && o.pointer("/spec/parentRef/name").and_then(Value::as_str) == Some(meta::name(svc))
    })
}

fn holds_port(cache: &Cache, port: u16, svc: &Value) -> bool {
    cache
        .get(&node_port_key(port))
        .is_some_and(|o| o["service"] == owner(svc).as_str())
}

fn invalid(name: &str, field: &str, value: impl ToString, detail: &str) -> ApiError {
    ApiError::Invalid {
        kind: "Service".into(),
        name: name.into(),
        errors: vec![FieldError::invalid(field, value, detail)],
    }
}

fn cluster_ip(svc: &Value) -> &str {
    svc.pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn svc_type(svc: &Value) -> &str {
    svc.pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
}

/// Node ports a Service holds.
fn node_ports(svc: &Value) -> Vec<u16> {
    svc.pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("nodePort").and_then(Value::as_u64))
        .filter_map(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .collect()
}

fn wants_node_ports(svc: &Value) -> bool {
    match svc_type(svc) {
        "NodePort" => true,
        "LoadBalancer" => svc
            .pointer("/spec/allocateLoadBalancerNodePorts")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        _ => false,
    }
}

/// Fill in the addresses of a Service about to be written (`old` is the
/// stored one on update) and return the allocation writes that must land
/// in the same transaction: new IPAddress and node port records, and the
/// deletion of those the update gives up.
pub fn allocate(
    cache: &Cache,
    old: Option<&Value>,
    svc: &mut Value,
) -> Result<Vec<Request>, ApiError> {
    let mut writes = Vec::new();
    let name = meta::name(svc).to_string();
    let range = crate::network::config().service_cidr;
    let ty = svc_type(svc).to_string();
    let old_ip = old.map(cluster_ip).unwrap_or("").to_string();

    // cluster IP: immutable once set (an update that leaves it out keeps it)
    let mut ip = cluster_ip(svc).to_string();
    if ip.is_empty() && !old_ip.is_empty() && ty != "ExternalName" {
        ip = old_ip.clone();
    }
    if !old_ip.is_empty() && ip != old_ip && ty != "ExternalName" {
        return Err(invalid(
            &name,
            "spec.clusterIPs[0]",
            &ip,
            "may not change once set",
        ));
    }
    if ty == "ExternalName" {
        ip.clear();
    } else if ip.is_empty() {
        let taken = |c: &Ipv4Addr| cache.get(&ip_key(&c.to_string())).is_some();
        let candidates: Vec<u32> = assignable(range).collect();
        let start = rand::rng().random_range(0..candidates.len().max(1));
        let free = (0..candidates.len())
            .map(|i| range.nth(candidates[(start + i) % candidates.len()]))
            .find(|c| !taken(c))
            .ok_or_else(|| {
                ApiError::Internal("failed to allocate a serviceIP: range is full".into())
            })?;
        ip = free.to_string();
        writes.push(create(ip_key(&ip), ip_object(&ip, svc)));
    } else if ip != "None" {
        let parsed: Ipv4Addr = ip.parse().map_err(|_| {
            invalid(
                &name,
                "spec.clusterIPs[0]",
                &ip,
                "must be a valid IP address, (e.g. 10.9.8.7)",
            )
        })?;
        if !range.contains(parsed) {
            return Err(invalid(
                &name,
                "spec.clusterIPs[0]",
                &ip,
                &format!(
                    "failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {range}"
                ),
            ));
        }
        if ip != old_ip {
            if cache.get(&ip_key(&ip)).is_some() {
                return Err(invalid(
                    &name,
                    "spec.clusterIPs[0]",
                    &ip,
                    &format!("failed to allocate IP {ip}: provided IP is already allocated"),
                ));
            }
            writes.push(create(ip_key(&ip), ip_object(&ip, svc)));
        }
    }
    if let Some(spec) = svc.get_mut("spec").and_then(Value::as_object_mut) {
        if ip.is_empty() {
            spec.remove("clusterIP");
            spec.remove("clusterIPs");
        } else {
            spec.insert("clusterIP".into(), json!(ip));
            spec.insert("clusterIPs".into(), json!([ip]));
            if ip != "None" {
                spec.insert("ipFamilies".into(), json!(["IPv4"]));
                spec.insert("ipFamilyPolicy".into(), json!("SingleStack"));
            }
        }
    }
    // an IP the update gives up (only when the type becomes ExternalName)
    if !old_ip.is_empty() && old_ip != "None" && ip != old_ip {
        if let Some(o) = old {
            if holds_ip(cache, &old_ip, o) {
                writes.push(delete(ip_key(&old_ip)));
            }
        }
    }

    // node ports
    let old_ports = old.map(node_ports).unwrap_or_default();
    let wants = wants_node_ports(svc);
    if wants {
        if let Some(spec) = svc.get_mut("spec").and_then(Value::as_object_mut) {
            spec.entry("externalTrafficPolicy")
                .or_insert(json!("Cluster"));
        }
    }
    let old_spec_ports: Vec<Value> = old
        .and_then(|o| o.pointer("/spec/ports"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut kept: Vec<u16> = Vec::new();
    let mut rng = rand::rng();
    let owner_name = owner(svc);
    if let Some(ports) = svc.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
        for (i, p) in ports.iter_mut().enumerate() {
            if !wants {
                if let Some(o) = p.as_object_mut() {
                    o.remove("nodePort");
                }
                continue;
            }
            let mut np = p
                .get("nodePort")
                .and_then(Value::as_u64)
                .and_then(|v| u16::try_from(v).ok())
                .unwrap_or(0);
            if np == 0 {
                // an update that leaves it out keeps the port it had
                np = old_spec_ports
                    .iter()
                    .find(|o| o["port"] == p["port"] && o["protocol"] == p["protocol"])
                    .and_then(|o| o.get("nodePort"))
                    .and_then(Value::as_u64)
                    .and_then(|v| u16::try_from(v).ok())
                    .unwrap_or(0);
            }
            if np != 0 && (old_ports.contains(&np) || kept.contains(&np)) {
                if kept.contains(&np) {
                    return Err(invalid(
                        &name,
                        &format!("spec.ports[{i}].nodePort"),
                        np,
                        "duplicate nodePort",
                    ));
                }
                kept.push(np);
            } else if np != 0 {
                if cache.get(&node_port_key(np)).is_some() {
                    return Err(invalid(
                        &name,
                        &format!("spec.ports[{i}].nodePort"),
                        np,
                        "provided port is already allocated",
                    ));
                }
                kept.push(np);
                writes.push(create(
                    node_port_key(np),
                    json!({"metadata": {"name": np.to_string()}, "service": owner_name}),
                ));
            } else {
                let span = (NODE_PORTS.end() - NODE_PORTS.start()) as u32 + 1;
                let start = rng.random_range(0..span);
                let free = (0..span)
                    .map(|k| NODE_PORTS.start() + ((start + k) % span) as u16)
                    .find(|c| !kept.contains(c) && cache.get(&node_port_key(*c)).is_none())
                    .ok_or_else(|| {
                        ApiError::Internal("failed to allocate a nodePort: range is full".into())
                    })?;
                np = free;
                kept.push(np);
                writes.push(create(
                    node_port_key(np),
                    json!({"metadata": {"name": np.to_string()}, "service": owner_name}),
                ));
            }
            p["nodePort"] = json!(np);
        }
    }
    if let Some(o) = old {
        for np in old_ports {
            if !kept.contains(&np) && holds_port(cache, np, o) {
                writes.push(delete(node_port_key(np)));
            }
        }
    }
    Ok(writes)
}

/// The writes that release what a Service being deleted holds.
pub fn release(cache: &Cache, svc: &Value) -> Vec<Request> {
    let mut writes = Vec::new();
    let ip = cluster_ip(svc);
    if !ip.is_empty() && ip != "None" && holds_ip(cache, ip, svc) {
        writes.push(delete(ip_key(ip)));
    }
    for np in node_ports(svc) {
        if holds_port(cache, np, svc) {
            writes.push(delete(node_port_key(np)));
        }
    }
    writes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserved_addresses_are_never_assigned() {
        let range: crate::network::Cidr = "127.32.0.0/28".parse().unwrap();
        let all: Vec<u32> = assignable(range).collect();
        assert_eq!(all, vec![2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14]);
    }
}
