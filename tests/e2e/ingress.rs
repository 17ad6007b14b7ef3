//! The Ingress gateway of the embedded agent: host and path rules to two
//! Services (HTTP functions dispatched in-process, a socket server guest
//! forwarded over HTTP), ports by number and by name, 404 with no rule,
//! 503 with no ready endpoint, TLS by SNI from a kubernetes.io/tls Secret,
//! status and events.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::functions::function_pod;
use crate::util::{eventually, free_port, Server};

const PODS: &str = "/api/v1/namespaces/default/pods";
const SVCS: &str = "/api/v1/namespaces/default/services";
const INGS: &str = "/apis/networking.k8s.io/v1/namespaces/default/ingresses";

fn svc(name: &str, app: &str, port: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
        "spec": {"selector": {"app": app}, "ports": [port]}})
}

async fn post(s: &Server, path: &str, body: Value) {
    let (code, resp) = s.call(Method::POST, path, Some(body)).await;
    assert_eq!(code, 201, "{resp}");
}

/// GET through the gateway with a Host header: status and body.
async fn get(port: u16, host: &str, path: &str) -> (u16, String) {
    let r = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .header("host", host)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// One HTTPS GET with SNI `host`, trusting `ca`; the raw response.
async fn get_tls(port: u16, host: &str, path: &str, ca: &str) -> String {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn ingress_routes_hosts_and_paths_to_services_with_tls() {
    let (http_port, tls_port) = (free_port(), free_port());
    let s = Server::builder()
        .arg("--ingress-listen")
        .arg(&format!("127.0.0.1:{http_port}"))
        .arg("--ingress-tls-listen")
        .arg(&format!("127.0.0.1:{tls_port}"))
        .start()
        .await;
    post(
        &s,
        PODS,
        function_pod("hello", "hello_http", json!({}), json!([])),
    )
    .await;
    post(
        &s,
        PODS,
        function_pod("api", "hello_http", json!({}), json!([])),
    )
    .await;
    // a socket server guest: the gateway forwards to it over HTTP
    let webserver = crate::util::example_image("wasm32-wasip2", "webserver");
    post(&s, PODS, json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": webserver, "ports": [{"name": "http", "containerPort": 8080}],
            "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}]}})).await;
    post(
        &s,
        SVCS,
        svc(
            "hello",
            "hello",
            json!({"name": "http", "port": 80, "targetPort": "http"}),
        ),
    )
    .await;
    post(
        &s,
        SVCS,
        svc(
            "api",
            "api",
            json!({"name": "web", "port": 8080, "targetPort": 8080}),
        ),
    )
    .await;
    post(
        &s,
        SVCS,
        svc("web", "web", json!({"port": 80, "targetPort": "http"})),
    )
    .await;
    post(&s, SVCS, svc("nobody", "no-such-app", json!({"port": 80}))).await;

    let cert = rcgen::generate_simple_self_signed(vec!["shop.test".to_string()]).unwrap();
    let (crt, key) = (cert.cert.pem(), cert.key_pair.serialize_pem());
    post(
        &s,
        "/api/v1/namespaces/default/secrets",
        json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "shop-tls"}, "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": crt, "tls.key": key}}),
    )
    .await;
    let backend = |name: &str, port: Value| json!({"service": {"name": name, "port": port}});
    post(&s, INGS, json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "shop"},
        "spec": {"tls": [{"hosts": ["shop.test"], "secretName": "shop-tls"}], "rules": [
            {"host": "shop.test", "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": backend("hello", json!({"number": 80}))},
                {"path": "/api", "pathType": "Prefix", "backend": backend("api", json!({"name": "web"}))},
                {"path": "/web", "pathType": "Exact", "backend": backend("web", json!({"number": 80}))}]}},
            {"host": "empty.test", "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": backend("nobody", json!({"number": 80}))}]}}]}})).await;

    // host and path pick the Service; both functions answer
    let (code, body) = eventually(60, "the shop answers", || async {
        let r = get(http_port, "shop.test", "/cart?item=3").await;
        (r.0 == 200).then_some(r)
    })
    .await;
    assert_eq!(
        (code, body.as_str()),
        (200, "hello from hello: GET /cart?item=3\n")
    );
    let api = eventually(60, "the api answers", || async {
        let r = get(http_port, "shop.test", "/api/orders").await;
        (r.0 == 200).then_some(r.1)
    })
    .await;
    assert_eq!(api, "hello from api: GET /api/orders\n");
    let web = eventually(60, "the socket server answers", || async {
        let r = get(http_port, "shop.test:8080", "/web").await;
        (r.0 == 200).then_some(r.1)
    })
    .await;
    assert_eq!(web, "hello from web at /web\n");
    // Exact: /web/more is not /web, so the / rule takes it
    assert_eq!(
        get(http_port, "shop.test", "/web/more").await.1,
        "hello from hello: GET /web/more\n"
    );
    // a function that traps answers 500 through the gateway, and the
    // gateway and the other function go on serving
    let (code, body) = get(http_port, "shop.test", "/trap").await;
    assert_eq!(code, 500, "{body}");
    assert!(body.contains("trapped"), "{body}");
    assert_eq!(get(http_port, "shop.test", "/api/after").await.0, 200);
    assert_eq!(get(http_port, "shop.test", "/after").await.0, 200);
    // no rule: 404; a Service without ready endpoints: 503
    let (code, body) = get(http_port, "elsewhere.test", "/").await;
    assert_eq!(code, 404, "{body}");
    let (code, body) = get(http_port, "empty.test", "/").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("no ready endpoints"), "{body}");

    // TLS: the certificate of the Secret the Ingress names, by SNI
    let resp = get_tls(tls_port, "shop.test", "/secure", &crt).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("hello from hello: GET /secure\n"), "{resp}");

    // status lists the node; bad references are reported as events
    eventually(30, "ingress status", || async {
        let (_, ing) = s.call(Method::GET, &format!("{INGS}/shop"), None).await;
        (ing["status"]["loadBalancer"]["ingress"][0]["ip"] == "127.0.0.1").then_some(())
    })
    .await;
    post(&s, INGS, json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "broken"},
        "spec": {"tls": [{"hosts": ["b.test"], "secretName": "missing-tls"}],
            "rules": [{"host": "b.test", "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": backend("ghost", json!({"number": 80}))}]}}]}})).await;
    let reasons = eventually(30, "events about the broken Ingress", || async {
        let (_, evs) = s
            .call(
                Method::GET,
                "/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Dbroken",
                None,
            )
            .await;
        let mut reasons: Vec<String> = evs["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["reason"].as_str().map(String::from))
            .collect();
        reasons.sort();
        reasons.dedup();
        (reasons.len() >= 2).then_some(reasons)
    })
    .await;
    assert_eq!(reasons, vec!["SecretNotFound", "ServiceNotFound"]);
    // the gateway answers the broken rule with a 503 naming the Service
    let (code, body) = get(http_port, "b.test", "/").await;
    assert_eq!(code, 503);
    assert!(body.contains("service default/ghost not found"), "{body}");
    // our IngressClass is there, and the default
    let (_, class) = s
        .call(
            Method::GET,
            "/apis/networking.k8s.io/v1/ingressclasses/wasmkube",
            None,
        )
        .await;
    assert_eq!(
        class["metadata"]["annotations"]["ingressclass.kubernetes.io/is-default-class"],
        "true"
    );
}

/// The gateway listens on the node's address (`node:PORT`), not on every
/// address: pods on the same node can use the same port on their own.
#[tokio::test]
async fn the_gateway_leaves_its_port_to_the_pods() {
    let port = free_port();
    let s = Server::builder()
        .arg("--ingress-listen")
        .arg(&format!("node:{port}"))
        .start()
        .await;
    let mut pod = function_pod("same-port", "hello_http", json!({}), json!([]));
    pod["spec"]["containers"][0]["ports"][0]["containerPort"] = json!(port);
    post(&s, PODS, pod).await;
    post(
        &s,
        SVCS,
        svc(
            "same-port",
            "same-port",
            json!({"port": 80, "targetPort": port}),
        ),
    )
    .await;
    post(&s, INGS, json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "same"},
        "spec": {"rules": [{"host": "same.test", "http": {"paths": [{"path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": "same-port", "port": {"number": 80}}}}]}}]}})).await;
    let ip = s
        .wait_pod("same-port", "same-port running", |p| {
            p["status"]["podIP"].is_string()
        })
        .await["status"]["podIP"]
        .as_str()
        .unwrap()
        .to_string();
    let direct = eventually(60, "the function on its own address", || async {
        let r = reqwest::Client::builder()
            .no_proxy()
            .build()
            .ok()?
            .get(format!("http://{ip}:{port}/direct"))
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())?;
        r.text().await.ok()
    })
    .await;
    assert_eq!(direct, "hello from same-port: GET /direct\n");
    let (code, body) = eventually(60, "the gateway on the node address", || async {
        let r = get(port, "same.test", "/via-gateway").await;
        (r.0 == 200).then_some(r)
    })
    .await;
    assert_eq!(
        (code, body.as_str()),
        (200, "hello from same-port: GET /via-gateway\n")
    );
}
