//! Cluster DNS: Service and pod names resolved from the agent's own caches
//! of Services and Endpoints.
//!
//! - `svc.ns.svc.cluster.local`: the Service's cluster IP, or for a
//!   headless Service (`clusterIP: None`) the addresses of its ready pods.
//! - `host.svc.ns.svc.cluster.local`: the pod of a headless Service with
//!   that hostname (StatefulSet pods: `name-0.svc.ns.svc.cluster.local`).
//! - `a-b-c-d.ns.pod.cluster.local`: the address itself.
//! - Short names are tried against the pod's search path
//!   (`ns.svc.cluster.local`, `svc.cluster.local`, `cluster.local`).
//!
//! Wasm guests get these answers from the host side of `wasi:sockets`
//! name lookup ([`Resolver`] given to the runtime); anything else asks the
//! DNS server every agent runs on the `kube-system/kube-dns` Service
//! address ([`serve`], UDP, A queries; other names are looked up with the
//! node's resolver).
//!
//! [`resolve`] decides (pure); [`parse_query`] and [`answer`] are the wire
//! format.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use crate::client::runtime::Cache;

/// The cluster domain.
pub const DOMAIN: &str = "cluster.local";

/// The answer for a name: `None` when it is not a cluster name (ask the
/// node's resolver); `Some(addresses)` otherwise (empty: no such name).
pub fn resolve(
    name: &str,
    pod_ns: &str,
    services: &Cache,
    endpoints: &Cache,
) -> Option<Vec<Ipv4Addr>> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let suffix = format!(".{DOMAIN}");
    if let Some(rest) = name.strip_suffix(&suffix) {
        return Some(resolve_fqdn(rest, services, endpoints));
    }
    // the pod's search path, as its resolv.conf would have it
    for search in [format!("{pod_ns}.svc"), "svc".to_string()] {
        let candidate = format!("{name}.{search}");
        let found = resolve_fqdn(&candidate, services, endpoints);
        if !found.is_empty() {
            return Some(found);
        }
    }
    None
}

/// `rest` is the name without `.cluster.local`.
fn resolve_fqdn(rest: &str, services: &Cache, endpoints: &Cache) -> Vec<Ipv4Addr> {
    let labels: Vec<&str> = rest.split('.').collect();
    match labels.as_slice() {
        [svc, ns, "svc"] => service_addresses(ns, svc, services, endpoints),
        [host, svc, ns, "svc"] => ready_addresses(ns, svc, endpoints, Some(host)),
        [ip, _ns, "pod"] => ip.replace('-', ".").parse().into_iter().collect(),
        _ => Vec::new(),
    }
}

fn service_addresses(ns: &str, name: &str, services: &Cache, endpoints: &Cache) -> Vec<Ipv4Addr> {
    let Some(svc) = services.get(&format!("{ns}/{name}")) else {
        return Vec::new();
    };
    match svc["spec"]["clusterIP"].as_str() {
        Some("None") => ready_addresses(ns, name, endpoints, None),
        Some(ip) => ip.parse().into_iter().collect(),
        None => Vec::new(),
    }
}

fn ready_addresses(ns: &str, svc: &str, endpoints: &Cache, host: Option<&str>) -> Vec<Ipv4Addr> {
    let Some(ep) = endpoints.get(&format!("{ns}/{svc}")) else {
        return Vec::new();
    };
    let mut out: Vec<Ipv4Addr> = ep["subsets"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["addresses"].as_array().cloned().unwrap_or_default())
        .filter(|a| host.is_none_or(|h| a["hostname"] == h))
        .filter_map(|a| a["ip"].as_str().and_then(|ip| ip.parse().ok()))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// A question read off the wire.
#[derive(Debug, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    pub name: String,
    pub qtype: u16,
    /// The bytes of the question section (echoed in the answer).
    question: Vec<u8>,
    recursion_desired: bool,
}

const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;

/// Parse a query with one question. `None`: not a query we can read.
pub fn parse_query(msg: &[u8]) -> Option<Query> {
    if msg.len() < 12 {
        return None;
    }
    let id = u16::from_be_bytes([msg[0], msg[1]]);
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    let qdcount = u16::from_be_bytes([msg[4], msg[5]]);
    if flags & 0x8000 != 0 || qdcount != 1 {
        return None;
    }
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = *msg.get(pos)? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None; // compression is not used in questions
        }
        let label = msg.get(pos..pos + len)?;
        labels.push(String::from_utf8_lossy(label).into_owned());
        pos += len;
    }
    let qtype = u16::from_be_bytes([*msg.get(pos)?, *msg.get(pos + 1)?]);
    let end = pos + 4;
    msg.get(pos..end)?;
    Some(Query {
        id,
        name: labels.join("."),
        qtype,
        question: msg[12..end].to_vec(),
        recursion_desired: flags & 0x0100 != 0,
    })
}

/// The response to `q`: A records for `addrs` (for A questions), or the
/// response code `rcode` (0 no error, 2 server failure, 3 no such name).
pub fn answer(q: &Query, addrs: &[Ipv4Addr], rcode: u8) -> Vec<u8> {
    let records: &[Ipv4Addr] = if q.qtype == TYPE_A && rcode == 0 {
        addrs
    } else {
        &[]
    };
    let mut flags: u16 = 0x8000 | 0x0400 | 0x0080 | u16::from(rcode & 0x0f); // QR, AA, RA
    if q.recursion_desired {
        flags |= 0x0100;
    }
    let mut out = Vec::with_capacity(12 + q.question.len() + records.len() * 16);
    out.extend_from_slice(&q.id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(records.len() as u16).to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&q.question);
    for ip in records {
        out.extend_from_slice(&[0xc0, 0x0c]); // the name: a pointer to the question
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&5u32.to_be_bytes()); // TTL: Services change
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&ip.octets());
    }
    out
}

/// Name resolution for Wasm guests of one pod (namespace `ns`).
#[derive(Clone)]
pub struct Resolver {
    pub services: Arc<Cache>,
    pub endpoints: Arc<Cache>,
}

impl Resolver {
    /// A cluster name's addresses, or `None` for names the node's resolver answers.
    pub fn lookup(&self, name: &str, ns: &str) -> Option<Vec<IpAddr>> {
        resolve(name, ns, &self.services, &self.endpoints)
            .map(|v| v.into_iter().map(IpAddr::V4).collect())
    }
}

/// Answer one query from a client in namespace `ns` (short names follow
/// its search path): cluster names from the caches, others from the
/// node's resolver. `None` for a message that is not a query.
pub async fn respond(msg: &[u8], ns: &str, services: &Cache, endpoints: &Cache) -> Option<Vec<u8>> {
    let q = parse_query(msg)?;
    let resolved = resolve(&q.name, ns, services, endpoints);
    Some(match resolved {
        Some(addrs) if addrs.is_empty() => answer(&q, &[], 3),
        Some(addrs) => answer(&q, &addrs, 0),
        None if q.qtype != TYPE_A => answer(&q, &[], 0),
        None => match tokio::net::lookup_host((q.name.as_str(), 0)).await {
            Ok(found) => {
                let v4: Vec<Ipv4Addr> = found
                    .filter_map(|a| match a.ip() {
                        IpAddr::V4(v4) => Some(v4),
                        IpAddr::V6(_) => None,
                    })
                    .collect();
                answer(&q, &v4, 0)
            }
            Err(_) => answer(&q, &[], 3),
        },
    })
}

/// Serve DNS over UDP on `addr` (shared with the other agents of this
/// machine) until `cancel`.
pub async fn serve(
    addr: SocketAddr,
    services: Arc<Cache>,
    endpoints: Arc<Cache>,
    mut cancel: crate::controllers::CancelToken,
) -> std::io::Result<()> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    let socket = Arc::new(tokio::net::UdpSocket::from_std(socket.into())?);
    tracing::info!(%addr, "cluster DNS listening");
    let mut buf = vec![0u8; 1500];
    loop {
        let (n, peer) = tokio::select! {
            r = socket.recv_from(&mut buf) => r?,
            _ = cancel.wait_for(|s| *s) => return Ok(()),
        };
        let msg = buf[..n].to_vec();
        let (socket, services, endpoints) = (socket.clone(), services.clone(), endpoints.clone());
        tokio::spawn(async move {
            // a client without a namespace: full names, and `svc.ns` / `svc.ns.svc`
            if let Some(reply) = respond(&msg, "default", &services, &endpoints).await {
                let _ = socket.send_to(&reply, peer).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn caches() -> (Arc<Cache>, Arc<Cache>) {
        let services = Cache::new();
        let endpoints = Cache::new();
        services.seed(json!({"metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "127.32.0.7"}}));
        services.seed(json!({"metadata": {"name": "db", "namespace": "shop"},
            "spec": {"clusterIP": "None"}}));
        endpoints.seed(json!({"metadata": {"name": "db", "namespace": "shop"},
            "subsets": [{"addresses": [
                {"ip": "127.64.0.3", "hostname": "db-0"},
                {"ip": "127.64.32.2", "hostname": "db-1"}],
                "notReadyAddresses": [{"ip": "127.64.0.9", "hostname": "db-2"}]}]}));
        (services, endpoints)
    }

    #[test]
    fn names_resolve_like_kube_dns() {
        let (s, e) = caches();
        let ip = |a: &str| a.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            resolve("web.shop.svc.cluster.local", "x", &s, &e),
            Some(vec![ip("127.32.0.7")])
        );
        assert_eq!(
            resolve("WEB.shop.svc.cluster.local.", "x", &s, &e),
            Some(vec![ip("127.32.0.7")])
        );
        // short names through the search path
        assert_eq!(resolve("web", "shop", &s, &e), Some(vec![ip("127.32.0.7")]));
        assert_eq!(
            resolve("web.shop", "x", &s, &e),
            Some(vec![ip("127.32.0.7")])
        );
        assert_eq!(
            resolve("web", "other", &s, &e),
            None,
            "not ours: ask the node"
        );
        // headless: the ready pods, and each by its hostname
        assert_eq!(
            resolve("db.shop.svc.cluster.local", "x", &s, &e),
            Some(vec![ip("127.64.0.3"), ip("127.64.32.2")])
        );
        assert_eq!(
            resolve("db-1.db.shop.svc.cluster.local", "x", &s, &e),
            Some(vec![ip("127.64.32.2")])
        );
        assert_eq!(
            resolve("db-2.db.shop.svc.cluster.local", "x", &s, &e),
            Some(vec![]),
            "not ready: not resolvable"
        );
        assert_eq!(
            resolve("127-64-0-3.shop.pod.cluster.local", "x", &s, &e),
            Some(vec![ip("127.64.0.3")])
        );
        assert_eq!(
            resolve("nope.shop.svc.cluster.local", "x", &s, &e),
            Some(vec![])
        );
    }

    #[test]
    fn the_wire_format_round_trips() {
        // a query for web.shop.svc.cluster.local, type A, recursion desired
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in ["web", "shop", "svc", "cluster", "local"] {
            q.push(l.len() as u8);
            q.extend_from_slice(l.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        let parsed = parse_query(&q).unwrap();
        assert_eq!(parsed.name, "web.shop.svc.cluster.local");
        assert_eq!(parsed.qtype, 1);
        let a = answer(&parsed, &["127.32.0.7".parse().unwrap()], 0);
        assert_eq!(&a[0..2], &[0x12, 0x34]);
        assert_eq!(a[3] & 0x0f, 0, "no error");
        assert_eq!(u16::from_be_bytes([a[6], a[7]]), 1, "one answer");
        assert_eq!(&a[a.len() - 4..], &[127, 32, 0, 7]);
        let nx = answer(&parsed, &[], 3);
        assert_eq!(nx[3] & 0x0f, 3);
        // garbage is not a query
        assert!(parse_query(&[1, 2, 3]).is_none());
        assert!(parse_query(&q[..q.len() - 2]).is_none());
    }
}
