//! Nodes join with a token, not the admin key: the CA is checked against
//! the token's hash before anything secret is sent, each agent gets its own
//! `system:node:NAME` certificate, keeps a node password, and may then read
//! and write only what its own pods and its own Node need.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::util::{eventually, stderr, stdout, wk, AgentProc, Server, WK};

fn ok(o: &std::process::Output) -> String {
    assert!(o.status.success(), "{}\n{}", stdout(o), stderr(o));
    stdout(o)
}

/// An HTTPS client with the credentials an agent keeps in its data directory.
fn node_client(data_dir: &Path) -> reqwest::Client {
    let read = |f: &str| std::fs::read_to_string(data_dir.join("tls").join(f)).unwrap();
    let id = wasmkube::tls::KeyPairPem {
        cert: read("client-node.crt"),
        key: read("client-node.key"),
    };
    wasmkube::tls::http_client(&read("server-ca.crt"), Some(&id)).unwrap()
}

/// Run `wk agent` to completion (for joins that must fail), at most 30 s.
fn agent_once(server: &Server, name: &str, token: &str, data: &Path) -> std::process::Output {
    let mut child = Command::new(WK)
        .args([
            "agent",
            "--server",
            &server.url,
            "--token",
            token,
            "--node-name",
            name,
        ])
        .arg("--data-dir")
        .arg(data)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--ingress-listen",
            "off",
            "--ingress-tls-listen",
            "off",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent should have given up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

async fn pod_with_secret(s: &Server, name: &str, node: &str, secret: &str) {
    let (code, body) = s
        .call(
            Method::POST,
            "/api/v1/namespaces/default/secrets",
            Some(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret}, "stringData": {"k": "v"}})),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"nodeName": node, "volumes": [{"name": "s", "secret": {"secretName": secret}}],
            "containers": [{"name": "c", "image": crate::util::example_image("wasm32-wasip1", "worker"),
                "args": ["0", "1000"], "volumeMounts": [{"name": "s", "mountPath": "/s"}]}]}});
    let (code, body) = s
        .call(Method::POST, "/api/v1/namespaces/default/pods", Some(pod))
        .await;
    assert_eq!(code, 201, "{body}");
}

#[tokio::test]
async fn an_agent_joins_with_a_token_and_acts_only_as_its_node() {
    let s = Server::start().await;
    let embedded = s.node_name().await;
    let kc = s.kubeconfig();
    let kc = kc.to_str().unwrap();
    // a join token made for the occasion, listed, usable
    let token = ok(&wk(&[
        "token",
        "create",
        "--ttl",
        "1h",
        "--description",
        "edge fleet",
        "--kubeconfig",
        kc,
    ]))
    .trim()
    .to_string();
    assert!(token.starts_with("K10") && token.contains("::"), "{token}");
    let hash = wasmkube::tls::pki::sha256_hex(s.ca().as_bytes());
    assert!(
        token.starts_with(&format!("K10{hash}::")),
        "the token carries the CA hash"
    );
    let id = token
        .rsplit("::")
        .next()
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .to_string();
    let list = ok(&wk(&["token", "list", "--kubeconfig", kc]));
    assert!(list.contains(&id) && list.contains("edge fleet"), "{list}");

    let agent = AgentProc::start_with(&s, "edge-1", &["--token", &token]);
    eventually(30, "edge-1 registers", || async {
        let (code, n) = s.call(Method::GET, "/api/v1/nodes/edge-1", None).await;
        (code == 200 && n["status"]["conditions"][0]["status"] == "True").then_some(())
    })
    .await;
    let data = agent.dir.path().join("data");
    let cert = wasmkube::tls::CertInfo::from_pem(
        &std::fs::read_to_string(data.join("tls/client-node.crt")).unwrap(),
    )
    .unwrap();
    assert_eq!(cert.common_name, "system:node:edge-1");
    assert_eq!(cert.organizations, vec!["system:nodes".to_string()]);
    use std::os::unix::fs::PermissionsExt;
    for f in ["tls/client-node.key", "tls/serving.key", "node-password"] {
        assert_eq!(
            std::fs::metadata(data.join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600,
            "{f}"
        );
    }

    // its pods run; it reads their Secret and nobody else's
    pod_with_secret(&s, "mine", "edge-1", "edge-secret").await;
    pod_with_secret(&s, "theirs", &embedded, "other-secret").await;
    s.wait_pod("mine", "mine runs on edge-1", |p| {
        p["status"]["phase"] == "Running"
    })
    .await;
    let node = node_client(&data);
    let get = |path: &str| {
        let (node, url) = (node.clone(), format!("{}{path}", s.url));
        async move {
            let r = node.get(url).send().await.unwrap();
            let code = r.status().as_u16();
            (code, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    assert_eq!(
        get("/api/v1/namespaces/default/secrets/edge-secret")
            .await
            .0,
        200
    );
    let (code, body) = get("/api/v1/namespaces/default/secrets/other-secret").await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("User \"system:node:edge-1\" cannot get resource \"secrets\" in API group \"\" in the namespace \"default\": no relationship found between node 'edge-1' and this object"),
        "{body}"
    );
    assert_eq!(
        get("/api/v1/namespaces/default/secrets").await.0,
        403,
        "no listing"
    );
    assert_eq!(get("/api/v1/namespaces/default/pods").await.0, 200);
    assert_eq!(get("/apis/apps/v1/deployments").await.0, 403);
    // the same identity through kubectl and wkctl, from a kubeconfig of its files
    let read = |f: &str| std::fs::read_to_string(data.join("tls").join(f)).unwrap();
    let node_kc = agent.dir.path().join("node-kubeconfig.yaml");
    wasmkube::client::Kubeconfig {
        server: s.url.clone(),
        ca: Some(read("server-ca.crt")),
        client_cert: Some(wasmkube::tls::KeyPairPem {
            cert: read("client-node.crt"),
            key: read("client-node.key"),
        }),
        ..Default::default()
    }
    .write(&node_kc)
    .unwrap();
    let who = ok(&crate::util::kubectl(&node_kc, &["auth", "whoami"]));
    assert!(
        who.contains("system:node:edge-1") && who.contains("system:nodes"),
        "{who}"
    );
    ok(&crate::util::kubectl(
        &node_kc,
        &["get", "secret", "edge-secret"],
    ));
    let e = crate::util::kubectl(&node_kc, &["get", "secret", "other-secret"]);
    assert!(
        stderr(&e).contains("no relationship found between node 'edge-1'"),
        "{}",
        stderr(&e)
    );
    let e = Command::new(crate::util::WKCTL)
        .args(["get", "deployments"])
        .env("KUBECONFIG", &node_kc)
        .output()
        .unwrap();
    assert!(
        stderr(&e).contains("User \"system:node:edge-1\" cannot list resource \"deployments\""),
        "{}",
        stderr(&e)
    );
    // it writes its own Node and nobody else's; it creates no pods
    let patch = |path: String| {
        let node = node.clone();
        async move {
            node.patch(path)
                .header("content-type", "application/merge-patch+json")
                .body(json!({"metadata": {"labels": {"touched": "yes"}}}).to_string())
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(patch(format!("{}/api/v1/nodes/edge-1", s.url)).await, 200);
    assert_eq!(
        patch(format!("{}/api/v1/nodes/{embedded}", s.url)).await,
        403
    );
    assert_eq!(
        patch(format!(
            "{}/api/v1/namespaces/default/pods/theirs/status",
            s.url
        ))
        .await,
        403
    );
    let r = node
        .post(format!("{}/api/v1/namespaces/default/pods", s.url))
        .json(
            &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sneaky"},
            "spec": {"nodeName": "edge-1", "containers": [{"name": "c", "image": "x"}]}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    // it may not register a Node under another name
    let r = node
        .post(format!("{}/api/v1/nodes", s.url))
        .json(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "edge-2"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    // its Service marks touch nothing but the activation annotation
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}});
    s.call(
        Method::POST,
        "/api/v1/namespaces/default/services",
        Some(svc),
    )
    .await;
    let r = node
        .patch(format!("{}/api/v1/namespaces/default/services/web", s.url))
        .header("content-type", "application/merge-patch+json")
        .body(json!({"spec": {"selector": {"app": "evil"}}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);

    // the agent's kubelet API: mutual TLS, only the API server may call it
    let (_, n) = s.call(Method::GET, "/api/v1/nodes/edge-1", None).await;
    let port = n["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .unwrap();
    let stats = format!("https://127.0.0.1:{port}/stats");
    assert!(
        s.anonymous().get(&stats).send().await.is_err(),
        "no client certificate: no handshake"
    );
    let r = node.get(&stats).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403, "a node is not the API server");
    assert_eq!(
        s.http.get(&stats).send().await.unwrap().status().as_u16(),
        200,
        "cluster-admin may"
    );
    // and through the API server, logs reach it
    let logs = ok(&s.kubectl(&["logs", "mine"]));
    let _ = logs;

    // a second machine cannot take the name
    let other = tempfile::tempdir().unwrap();
    let out = agent_once(&s, "edge-1", &token, other.path());
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("node password mismatch"),
        "{}",
        stderr(&out)
    );

    // a token whose CA hash is not the server's is never sent
    let wrong = format!(
        "K10{}::{}",
        "0".repeat(64),
        token.rsplit("::").next().unwrap()
    );
    let out = agent_once(&s, "edge-9", &wrong, &other.path().join("x"));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("does not match the hash in the join token"),
        "{}",
        stderr(&out)
    );
    // no hash at all is refused before connecting
    let out = agent_once(&s, "edge-9", "just-a-secret", &other.path().join("y"));
    assert!(
        stderr(&out).contains("the token has no CA hash"),
        "{}",
        stderr(&out)
    );
    // a deleted token no longer joins; an expired one neither
    ok(&wk(&["token", "delete", &id, "--kubeconfig", kc]));
    let out = agent_once(&s, "edge-3", &token, &other.path().join("z"));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("401"), "{}", stderr(&out));
    let short = ok(&wk(&["token", "create", "--ttl", "1s", "--kubeconfig", kc]))
        .trim()
        .to_string();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let out = agent_once(&s, "edge-4", &short, &other.path().join("w"));
    assert!(stderr(&out).contains("401"), "{}", stderr(&out));
    // the server's own token works as well (the default for `wk agent`)
    assert!(s.join_token.starts_with(&format!("K10{hash}::server:")));
}
