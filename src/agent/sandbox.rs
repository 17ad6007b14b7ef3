//! Reaching into sandboxed pods: a pod with a Linux container lives in a
//! network namespace of its own, while pod and Service addresses are
//! loopback addresses of the node (docs/networking.md). The agent listens
//! on the pod's address for each port the pod declares (and each port its
//! probes use) and carries every connection into the namespace, where it
//! connects to the same address and port: a server that listens on all
//! addresses or on the pod's address is reached, one that listens only on
//! `127.0.0.1` stays private to the pod, as in Kubernetes.
//! docs/adr/005-pod-sandboxes.md has the design and what it leaves out.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde_json::Value;
use wasmkube_runtime::sandbox::NetnsRuntime;

/// The TCP ports a pod declares (`containerPorts`) or probes by number.
pub fn container_ports(pod: &Value) -> Vec<u16> {
    let mut out = Vec::new();
    for c in ["initContainers", "containers"]
        .iter()
        .flat_map(|k| pod["spec"][k].as_array().cloned().unwrap_or_default())
    {
        for p in c["ports"].as_array().into_iter().flatten() {
            let tcp = p["protocol"].as_str().is_none_or(|x| x == "TCP");
            if let (true, Some(n)) = (tcp, p["containerPort"].as_u64()) {
                out.push(n as u16);
            }
        }
        for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
            for kind in ["httpGet", "tcpSocket"] {
                if let Some(n) = c[probe][kind]["port"].as_u64() {
                    out.push(n as u16);
                }
            }
        }
    }
    out.retain(|p| *p != 0);
    out
}

/// Listen on `ip:port` on the node and carry each connection into the
/// namespace `ns`, to the same address and port there.
pub async fn forward(
    ip: IpAddr,
    port: u16,
    ns: Arc<NetnsRuntime>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, port)).await?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut outside, _)) = listener.accept().await else {
                continue;
            };
            let ns = ns.clone();
            tokio::spawn(async move {
                // the socket is made on the namespace's thread, so it lives there
                let inside = ns
                    .handle()
                    .spawn(async move {
                        let s = tokio::net::TcpStream::connect(SocketAddr::new(ip, port)).await?;
                        s.into_std()
                    })
                    .await;
                let Ok(Ok(inside)) = inside else {
                    return;
                };
                let Ok(mut inside) = tokio::net::TcpStream::from_std(inside) else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut outside, &mut inside).await;
            });
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn declared_and_probed_ports_are_forwarded() {
        let pod = json!({"spec": {"containers": [
            {"name": "a", "ports": [{"containerPort": 80}, {"containerPort": 53, "protocol": "UDP"}],
             "readinessProbe": {"httpGet": {"port": 8080}}},
            {"name": "b", "livenessProbe": {"tcpSocket": {"port": 9000}}, "startupProbe": {"httpGet": {"port": "http"}}}
        ]}});
        assert_eq!(container_ports(&pod), vec![80, 8080, 9000]);
    }
}
