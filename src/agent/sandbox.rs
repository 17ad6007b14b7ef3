//! Reaching into sandboxed pods: a pod with a Linux container lives in a
//! network namespace of its own, while pod and Service addresses are
//! loopback addresses of the node (docs/networking.md). The agent listens
//! on the pod's address for each port the pod declares (and each port its
//! probes use) and carries every connection into the namespace, where it
//! connects to the same address and port: a server that listens on all
//! addresses or on the pod's address is reached, one that listens only on
//! `127.0.0.1` stays private to the pod, as in Kubernetes.
//!
//! The other way, [`egress`] gives the pod the node's view of the network:
//! inside the namespace, nftables redirects every TCP connection that does
//! not stay in the pod, and every DNS query, to two sockets of the agent's.
//! The agent opens each connection again on the node, to the address the
//! pod asked for (`SO_ORIGINAL_DST`), and answers DNS itself with the pod's
//! search path. So Services, other pods and the cluster DNS answer a
//! sandboxed pod as they answer a Wasm pod.
//! docs/adr/005-oci-runtime-and-pod-sandboxes.md has the design and what it
//! leaves out.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use crate::client::runtime::Cache;

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

/// The nftables rules of a pod's namespace: connections to anything but
/// `127.0.0.1` and the pod's own address go to the agent's TCP socket at
/// `127.0.0.1:tcp`, DNS queries to its UDP socket at `127.0.0.1:udp`. The
/// table is replaced whole, so applying it again (a restarted agent) is safe.
pub fn egress_rules(pod_ip: IpAddr, tcp: u16, udp: u16) -> String {
    format!(
        "table ip wasmkube\n\
         delete table ip wasmkube\n\
         table ip wasmkube {{\n\
         \tchain egress {{\n\
         \t\ttype nat hook output priority -100; policy accept;\n\
         \t\tip daddr {{ 127.0.0.1, {pod_ip} }} return\n\
         \t\tudp dport 53 redirect to :{udp}\n\
         \t\tmeta l4proto tcp redirect to :{tcp}\n\
         \t}}\n\
         }}\n"
    )
}

/// Run `program args` with `input` on its stdin, in the calling thread's
/// network namespace (a child starts in its parent thread's namespaces).
fn run_here(program: &str, args: &[&str], input: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| std::io::Error::new(e.kind(), format!("running {program}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// The address a redirected connection was meant for.
fn original_destination(s: &tokio::net::TcpStream) -> std::io::Result<SocketAddr> {
    use std::os::fd::AsRawFd;
    // SAFETY: a zeroed sockaddr_in is a valid value; getsockopt writes at
    // most `len` bytes into it.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a valid socket and a buffer of `len` bytes.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_IP,
            libc::SO_ORIGINAL_DST,
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
        u16::from_be(addr.sin_port),
    )))
}

/// Give the pod in `ns` (address `pod_ip`, namespace `pod_ns`) the node's
/// network: set up the namespace's route and rules (`ip` and `nft` from
/// iproute2 and nftables) and serve the redirected connections and DNS
/// queries until the returned tasks are aborted.
pub async fn egress(
    ns: Arc<NetnsRuntime>,
    pod_ip: IpAddr,
    pod_ns: String,
    services: Arc<Cache>,
    endpoints: Arc<Cache>,
) -> std::io::Result<Vec<tokio::task::JoinHandle<()>>> {
    // made on the namespace's thread, so the sockets and the rules are there
    let (tcp, udp) = ns
        .handle()
        .spawn(async move {
            let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
            let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
            // addresses outside the pod route to its loopback device, where
            // the rules catch them; replies come from the node's side
            run_here(
                "ip",
                &[
                    "route",
                    "replace",
                    "default",
                    "dev",
                    "lo",
                    "src",
                    "127.0.0.1",
                ],
                "",
            )?;
            let rules = egress_rules(pod_ip, tcp.local_addr()?.port(), udp.local_addr()?.port());
            run_here("nft", &["-f", "-"], &rules)?;
            tcp.set_nonblocking(true)?;
            udp.set_nonblocking(true)?;
            Ok::<_, std::io::Error>((tcp, udp))
        })
        .await
        .map_err(std::io::Error::other)??;
    let tcp = tokio::net::TcpListener::from_std(tcp)?;
    let own = tcp.local_addr()?;
    let udp = Arc::new(tokio::net::UdpSocket::from_std(udp)?);
    let connections = tokio::spawn(async move {
        loop {
            let Ok((mut inside, _)) = tcp.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let Ok(target) = original_destination(&inside) else {
                    return;
                };
                // a connection straight to this socket was not redirected:
                // it must not become one to the node's own localhost
                if target == own {
                    return;
                }
                // made on a thread of the node's runtime: the node's network
                if let Ok(mut outside) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inside, &mut outside).await;
                }
            });
        }
    });
    let dns = tokio::spawn(async move {
        let mut buf = vec![0u8; 1500];
        loop {
            let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
                continue;
            };
            let msg = buf[..n].to_vec();
            let (udp, services, endpoints, pod_ns) = (
                udp.clone(),
                services.clone(),
                endpoints.clone(),
                pod_ns.clone(),
            );
            tokio::spawn(async move {
                if let Some(reply) = super::dns::respond(&msg, &pod_ns, &services, &endpoints).await
                {
                    let _ = udp.send_to(&reply, peer).await;
                }
            });
        }
    });
    Ok(vec![connections, dns])
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

    #[test]
    fn egress_rules_keep_the_pods_own_addresses_and_replace_the_table() {
        let rules = egress_rules("127.64.0.9".parse().unwrap(), 40001, 40002);
        assert!(rules.starts_with("table ip wasmkube\ndelete table ip wasmkube\n"));
        assert!(rules.contains("ip daddr { 127.0.0.1, 127.64.0.9 } return"));
        assert!(rules.contains("udp dport 53 redirect to :40002"));
        assert!(rules.contains("meta l4proto tcp redirect to :40001"));
        // the exemption comes before the redirects
        assert!(rules.find("return").unwrap() < rules.find("redirect").unwrap());
    }
}
