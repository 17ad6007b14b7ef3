//! Services across two agents: cluster IP allocation (IPAddress objects in
//! the same transaction), the agents' proxies load-balancing over ready
//! endpoints on both nodes, NodePort on every node, LoadBalancer status,
//! EndpointSlices, Service environment variables, per-node pod ranges.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::util::{eventually, stderr, stdout, AgentProc, Server};

const PODS: &str = "/api/v1/namespaces/default/pods";
const SVCS: &str = "/api/v1/namespaces/default/services";

fn webserver_image() -> String {
    crate::util::example_image("wasm32-wasip2", "webserver")
}

/// A webserver pod on `node` binding its pod IP on 8080, Ready by HTTP probe.
fn web_pod(name: &str, node: &str, app: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": app}}, "spec": {
        "nodeName": node,
        "containers": [{"name": "web", "image": webserver_image(),
            "env": [{"name": "PORT", "value": "8080"},
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1}}]}})
}

fn in_cidr(ip: &str, cidr: &str) -> bool {
    let (base, bits) = cidr.split_once('/').unwrap();
    let base = u32::from(base.parse::<std::net::Ipv4Addr>().unwrap());
    let ip = u32::from(ip.parse::<std::net::Ipv4Addr>().unwrap());
    let mask = u32::MAX << (32 - bits.parse::<u32>().unwrap());
    ip & mask == base & mask
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

async fn ready_ips(s: &Server, svc: &str) -> Vec<String> {
    let (_, ep) = s
        .call(
            Method::GET,
            &format!("/api/v1/namespaces/default/endpoints/{svc}"),
            None,
        )
        .await;
    let mut ips: Vec<String> = ep["subsets"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["addresses"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["ip"].as_str().map(String::from))
        .collect();
    ips.sort();
    ips
}

/// Which pods answered `n` GETs of `url`; every request must succeed.
async fn answers(url: &str, n: usize) -> BTreeSet<String> {
    let client = http();
    let mut seen = BTreeSet::new();
    for i in 0..n {
        let resp = client
            .get(format!("{url}/req-{i}"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {i} to {url}: {e}"));
        assert_eq!(resp.status(), 200, "request {i} to {url}");
        let body = resp.text().await.unwrap();
        let pod = body
            .strip_prefix("hello from ")
            .and_then(|b| b.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected answer {body:?}"));
        seen.insert(pod.to_string());
    }
    seen
}

#[tokio::test]
async fn a_service_balances_over_replicas_on_two_agents_and_survives_a_replica_loss() {
    let s = Server::start().await;
    let first = s.node_name().await;
    let _edge = AgentProc::start_with(&s, "edge-2", &["--advertise-address", "127.0.0.2"]);

    // every node gets its own pod range, and pod IPs come from it
    let nodes = eventually(30, "both nodes have a pod range", || async {
        let (_, nodes) = s.call(Method::GET, "/api/v1/nodes", None).await;
        let items = nodes["items"].as_array().cloned().unwrap_or_default();
        (items.len() == 2 && items.iter().all(|n| n["spec"]["podCIDR"].is_string()))
            .then_some(items)
    })
    .await;
    let cidrs: BTreeSet<&str> = nodes
        .iter()
        .map(|n| n["spec"]["podCIDR"].as_str().unwrap())
        .collect();
    assert_eq!(cidrs.len(), 2, "distinct ranges: {cidrs:?}");

    for (name, node) in [("web-a", first.as_str()), ("web-b", "edge-2")] {
        let (code, body) = s
            .call(Method::POST, PODS, Some(web_pod(name, node, "web")))
            .await;
        assert_eq!(code, 201, "{body}");
    }
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}});
    let (code, svc) = s.call(Method::POST, SVCS, Some(svc)).await;
    assert_eq!(code, 201, "{svc}");
    let cluster_ip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
    assert!(in_cidr(&cluster_ip, "127.32.0.0/11"), "{svc}");
    assert_eq!(svc["spec"]["clusterIPs"], json!([cluster_ip]));
    let node_port = svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
    assert!((30000..=32767).contains(&node_port), "{svc}");

    // the allocation is an IPAddress object pointing at the Service
    let (code, ipaddr) = s
        .call(
            Method::GET,
            &format!("/apis/networking.k8s.io/v1/ipaddresses/{cluster_ip}"),
            None,
        )
        .await;
    assert_eq!(code, 200, "{ipaddr}");
    assert_eq!(ipaddr["spec"]["parentRef"]["name"], "web");

    // pods get addresses from their node's range
    for (name, node) in [("web-a", first.as_str()), ("web-b", "edge-2")] {
        let p = s
            .wait_pod(name, &format!("{name} Ready"), |p| {
                p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
            .await;
        let cidr = nodes
            .iter()
            .find(|n| n["metadata"]["name"] == node)
            .unwrap()["spec"]["podCIDR"]
            .as_str()
            .unwrap();
        let ip = p["status"]["podIP"].as_str().unwrap();
        assert!(in_cidr(ip, cidr), "{name} has {ip}, node range {cidr}");
    }
    eventually(30, "two ready endpoints", || async {
        (ready_ips(&s, "web").await.len() == 2).then_some(())
    })
    .await;

    // the cluster IP balances over both replicas, on both nodes
    let seen = eventually(
        30,
        "both replicas answer through the cluster IP",
        || async {
            let seen = answers(&format!("http://{cluster_ip}:80"), 20).await;
            (seen.len() == 2).then_some(seen)
        },
    )
    .await;
    assert_eq!(
        seen,
        BTreeSet::from(["web-a".to_string(), "web-b".to_string()])
    );
    // the node port answers on every node's address
    for node_ip in ["127.0.0.1", "127.0.0.2"] {
        let seen = answers(&format!("http://{node_ip}:{node_port}"), 10).await;
        assert!(!seen.is_empty());
    }
    // LoadBalancer status lists the nodes, as k3s's ServiceLB does
    eventually(30, "load balancer ingress lists both nodes", || async {
        let (_, svc) = s.call(Method::GET, &format!("{SVCS}/web"), None).await;
        let ips: BTreeSet<String> = svc["status"]["loadBalancer"]["ingress"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["ip"].as_str().map(String::from))
            .collect();
        (ips == BTreeSet::from(["127.0.0.1".to_string(), "127.0.0.2".to_string()])).then_some(())
    })
    .await;
    // and an EndpointSlice lists the endpoints for discovery.k8s.io clients
    let (code, slices) = s
        .call(
            Method::GET,
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Dweb",
            None,
        )
        .await;
    assert_eq!(code, 200, "{slices}");
    assert_eq!(slices["items"][0]["addressType"], "IPv4");

    // a replica goes away: it leaves the endpoints, and then every request succeeds
    let (code, body) = s.call(Method::DELETE, &format!("{PODS}/web-a"), None).await;
    assert_eq!(code, 200, "{body}");
    eventually(30, "web-a leaves the endpoints", || async {
        (ready_ips(&s, "web").await.len() == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = answers(&format!("http://{cluster_ip}:80"), 20).await;
    assert_eq!(seen, BTreeSet::from(["web-b".to_string()]));
    let (_, svc) = s.call(Method::GET, &format!("{SVCS}/web"), None).await;
    assert_eq!(
        svc["spec"]["clusterIP"], cluster_ip,
        "the Service keeps its address"
    );

    // a pod started now sees the Service in its environment
    // (each pod binds its own address, so every replica can use port 8080)
    let env_pod = web_pod("env-check", &first, "other");
    let (code, body) = s.call(Method::POST, PODS, Some(env_pod)).await;
    assert_eq!(code, 201, "{body}");
    s.wait_pod("env-check", "env-check running", |p| {
        p["status"]["containerStatuses"][0]["state"]["running"].is_object()
    })
    .await;
    let out = s.wkctl(&[
        "exec",
        "env-check",
        "--",
        "webserver",
        "env",
        "WEB_SERVICE_HOST",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), cluster_ip);
    let out = s.wkctl(&[
        "exec",
        "env-check",
        "--",
        "webserver",
        "env",
        "WEB_PORT_80_TCP",
    ]);
    assert_eq!(stdout(&out).trim(), format!("tcp://{cluster_ip}:80"));

    // a guest reaches the Service by its DNS name, short and full
    for target in ["web:80", "web.default.svc.cluster.local:80"] {
        let out = s.wkctl(&[
            "exec",
            "env-check",
            "--",
            "webserver",
            "get",
            target,
            "/by-name",
        ]);
        assert!(out.status.success(), "{target}: {}", stderr(&out));
        assert_eq!(stdout(&out), "hello from web-b at /by-name\n", "{target}");
    }
    let out = s.wkctl(&[
        "exec",
        "env-check",
        "--",
        "webserver",
        "get",
        "nope.default.svc.cluster.local:80",
        "/",
    ]);
    assert!(
        !out.status.success(),
        "an unknown Service name does not resolve"
    );

    // the agents' DNS server answers on the kube-dns address: Services,
    // headless Services (ready pods) and their pods by hostname
    let headless = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web-h"},
        "spec": {"clusterIP": "None", "selector": {"app": "web"}, "ports": [{"port": 8080}]}});
    let (code, body) = s.call(Method::POST, SVCS, Some(headless)).await;
    assert_eq!(code, 201, "{body}");
    let mut named = web_pod("web-c", "edge-2", "web");
    named["spec"]["hostname"] = json!("c");
    named["spec"]["subdomain"] = json!("web-h");
    let (code, body) = s.call(Method::POST, PODS, Some(named)).await;
    assert_eq!(code, 201, "{body}");
    let (_, dns_svc) = s
        .call(
            Method::GET,
            "/api/v1/namespaces/kube-system/services/kube-dns",
            None,
        )
        .await;
    let dns: std::net::SocketAddr =
        format!("{}:53", dns_svc["spec"]["clusterIP"].as_str().unwrap())
            .parse()
            .unwrap();
    assert_eq!(
        dns_query(dns, "web.default.svc.cluster.local").await,
        Some(vec![cluster_ip.clone()])
    );
    let pod_ip = |name: &'static str| {
        let s = &s;
        async move {
            let (_, p) = s.call(Method::GET, &format!("{PODS}/{name}"), None).await;
            p["status"]["podIP"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        }
    };
    let c_ip = eventually(60, "web-c ready behind the headless Service", || async {
        let want = pod_ip("web-c").await;
        (ready_ips(&s, "web-h").await.contains(&want)).then_some(want)
    })
    .await;
    let b_ip = pod_ip("web-b").await;
    let mut both = vec![b_ip.clone(), c_ip.clone()];
    both.sort();
    assert_eq!(
        dns_query(dns, "web-h.default.svc.cluster.local").await,
        Some(both)
    );
    assert_eq!(
        dns_query(dns, "c.web-h.default.svc.cluster.local").await,
        Some(vec![c_ip])
    );
    assert_eq!(dns_query(dns, "nope.default.svc.cluster.local").await, None);

    // deleting the Service releases its address
    let (code, _) = s.call(Method::DELETE, &format!("{SVCS}/web"), None).await;
    assert_eq!(code, 200);
    let (code, _) = s
        .call(
            Method::GET,
            &format!("/apis/networking.k8s.io/v1/ipaddresses/{cluster_ip}"),
            None,
        )
        .await;
    assert_eq!(code, 404, "the IPAddress goes with its Service");
}

#[tokio::test]
async fn cluster_ips_and_node_ports_are_never_handed_out_twice() {
    let s = Server::builder()
        .arg("--disable-agent")
        .arg("--service-cidr")
        .arg("127.32.0.0/16")
        .start()
        .await;
    let svc = |name: &str, extra: Value| {
        let mut v = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"ports": [{"port": 80}]}});
        if let Some(o) = extra.as_object() {
            for (k, val) in o {
                v["spec"][k] = val.clone();
            }
        }
        v
    };
    let (code, a) = s
        .call(
            Method::POST,
            SVCS,
            Some(svc("a", json!({"clusterIP": "127.32.0.50"}))),
        )
        .await;
    assert_eq!(code, 201, "{a}");
    assert_eq!(a["spec"]["clusterIP"], "127.32.0.50");
    // the same address again is refused, naming the field
    let (code, b) = s
        .call(
            Method::POST,
            SVCS,
            Some(svc("b", json!({"clusterIP": "127.32.0.50"}))),
        )
        .await;
    assert_eq!(code, 422, "{b}");
    assert_eq!(b["details"]["causes"][0]["field"], "spec.clusterIPs[0]");
    assert!(
        b["message"].as_str().unwrap().contains("already allocated"),
        "{b}"
    );
    // outside the range
    let (code, b) = s
        .call(
            Method::POST,
            SVCS,
            Some(svc("b", json!({"clusterIP": "10.0.0.1"}))),
        )
        .await;
    assert_eq!(code, 422, "{b}");
    // the failed creates stored nothing
    let (code, _) = s.call(Method::GET, &format!("{SVCS}/b"), None).await;
    assert_eq!(code, 404);
    // a node port in use is refused too
    let np = json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 31000}]});
    let (code, c) = s.call(Method::POST, SVCS, Some(svc("c", np.clone()))).await;
    assert_eq!(code, 201, "{c}");
    let (code, d) = s.call(Method::POST, SVCS, Some(svc("d", np))).await;
    assert_eq!(code, 422, "{d}");
    assert_eq!(d["details"]["causes"][0]["field"], "spec.ports[0].nodePort");

    // many Services created at once all get distinct addresses
    let mut creates = Vec::new();
    for i in 0..40 {
        let s = &s;
        creates.push(async move {
            let (code, v) = s
                .call(
                    Method::POST,
                    SVCS,
                    Some(svc(&format!("many-{i}"), json!({}))),
                )
                .await;
            assert_eq!(code, 201, "{v}");
            v["spec"]["clusterIP"].as_str().unwrap().to_string()
        });
    }
    let ips: Vec<String> = futures::future::join_all(creates).await;
    let distinct: BTreeSet<&String> = ips.iter().collect();
    assert_eq!(distinct.len(), ips.len());

    // an update keeps the address; changing it is refused; a headless Service has none
    let mut a2 = a.clone();
    a2["spec"].as_object_mut().unwrap().remove("clusterIP");
    a2["spec"].as_object_mut().unwrap().remove("clusterIPs");
    a2["metadata"]["labels"] = json!({"x": "y"});
    let (code, a2) = s.call(Method::PUT, &format!("{SVCS}/a"), Some(a2)).await;
    assert_eq!(code, 200, "{a2}");
    assert_eq!(a2["spec"]["clusterIP"], "127.32.0.50");
    let mut a3 = a2.clone();
    a3["spec"]["clusterIP"] = json!("127.32.0.51");
    a3["spec"]["clusterIPs"] = json!(["127.32.0.51"]);
    let (code, body) = s.call(Method::PUT, &format!("{SVCS}/a"), Some(a3)).await;
    assert_eq!(code, 422, "{body}");
    let (code, h) = s
        .call(
            Method::POST,
            SVCS,
            Some(svc("headless", json!({"clusterIP": "None"}))),
        )
        .await;
    assert_eq!(code, 201, "{h}");
    assert_eq!(h["spec"]["clusterIP"], "None");
    // NodePort → ClusterIP gives the port back
    let mut c2 = c.clone();
    c2["spec"]["type"] = json!("ClusterIP");
    let (code, c2) = s.call(Method::PUT, &format!("{SVCS}/c"), Some(c2)).await;
    assert_eq!(code, 200, "{c2}");
    assert!(c2["spec"]["ports"][0].get("nodePort").is_none(), "{c2}");
    let np = json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 31000}]});
    let (code, e) = s.call(Method::POST, SVCS, Some(svc("e", np))).await;
    assert_eq!(code, 201, "the released port can be had again: {e}");
}

/// Ask the DNS server at `server` for the A records of `name`: Some(sorted
/// addresses) on success, None for NXDOMAIN.
async fn dns_query(server: std::net::SocketAddr, name: &str) -> Option<Vec<String>> {
    let mut q = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in name.split('.') {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(&q, server).await.unwrap();
    let mut buf = [0u8; 1500];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .expect("the DNS server answers")
        .unwrap();
    let r = &buf[..n];
    assert_eq!(&r[0..2], &[0xab, 0xcd], "the answer carries the query id");
    match r[3] & 0x0f {
        0 => {}
        3 => return None,
        other => panic!("DNS rcode {other}"),
    }
    let count = u16::from_be_bytes([r[6], r[7]]) as usize;
    // answers follow the echoed question; each is 16 bytes with a name pointer
    let start = q.len();
    let mut out: Vec<String> = (0..count)
        .map(|i| {
            let a = &r[start + i * 16 + 12..start + i * 16 + 16];
            std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]).to_string()
        })
        .collect();
    out.sort();
    Some(out)
}
