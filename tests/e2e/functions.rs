//! HTTP functions (`wasi:http/incoming-handler` components) served by the
//! agent on the pod's address with a fresh instance per request: path and
//! query echo, streaming bodies, body limits, traps, runaway guests,
//! concurrency limits, malformed requests, and a function that calls
//! another Service by name through `wasi:http/outgoing-handler`.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::{eventually, Server};

const PODS: &str = "/api/v1/namespaces/default/pods";
const SVCS: &str = "/api/v1/namespaces/default/services";

pub fn function_image(name: &str) -> String {
    crate::util::example_image("wasm32-wasip2", name)
}

/// A pod running the function `image`, labelled `app: NAME`.
pub fn function_pod(name: &str, image: &str, annotations: Value, env: Value) -> Value {
    let mut env = env.as_array().cloned().unwrap_or_default();
    env.push(
        json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
    );
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}, "annotations": annotations},
        "spec": {"containers": [{"name": "fn", "image": function_image(image),
            "ports": [{"name": "http", "containerPort": 8080}], "env": env}]}})
}

async fn start(s: &Server, pod: Value) -> String {
    let name = pod["metadata"]["name"].as_str().unwrap().to_string();
    let (code, body) = s.call(Method::POST, PODS, Some(pod)).await;
    assert_eq!(code, 201, "{body}");
    let p = s
        .wait_pod(&name, &format!("{name} running"), |p| {
            p["status"]["containerStatuses"][0]["state"]["running"].is_object()
        })
        .await;
    p["status"]["podIP"].as_str().unwrap().to_string()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// GET until the function answers (its listener comes up with the container).
async fn first_answer(url: &str) -> String {
    eventually(30, &format!("{url} answers"), || async {
        let r = http().get(url).send().await.ok()?;
        (r.status() == 200).then_some(())?;
        r.text().await.ok()
    })
    .await
}

#[tokio::test]
async fn an_http_function_answers_per_request_and_survives_bad_requests_traps_and_runaways() {
    let s = Server::start().await;
    let ip = start(
        &s,
        function_pod(
            "hello",
            "hello_http",
            json!({"wasmkube.io/http-timeout-seconds": "2", "wasmkube.io/http-max-body": "64Ki"}),
            json!([]),
        ),
    )
    .await;
    let base = format!("http://{ip}:8080");
    assert_eq!(
        first_answer(&format!("{base}/a/b?x=1&y=two")).await,
        "hello from hello: GET /a/b?x=1&y=two\n"
    );

    // bodies stream through both ways
    let body: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
    let r = http()
        .post(format!("{base}/echo"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().to_vec(), body);

    // over the body limit: declared, and streamed without a length
    let big = vec![b'x'; 100 * 1024];
    let r = http()
        .post(format!("{base}/echo"))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.text().await.unwrap().contains("65536 bytes"));
    let chunks = futures::stream::iter(
        big.chunks(8192)
            .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let r = http()
        .post(format!("{base}/echo"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413, "a streamed body over the limit");

    // a trap is a 500 naming it; the function keeps serving
    let r = http().get(format!("{base}/trap")).send().await.unwrap();
    assert_eq!(r.status(), 500);
    let text = r.text().await.unwrap();
    assert!(text.contains("trapped"), "{text}");
    // a guest that never answers is cut off at the deadline
    let r = http().get(format!("{base}/spin")).send().await.unwrap();
    assert_eq!(r.status(), 504);
    assert!(r.text().await.unwrap().contains("within 2s"));
    // a malformed request gets a 400 from the server, not the function
    let mut conn = tokio::net::TcpStream::connect(format!("{ip}:8080"))
        .await
        .unwrap();
    conn.write_all(b"NOT HTTP AT ALL\r\n\r\n").await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut reply)).await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    // and after all that, it still answers
    let r = http()
        .get(format!("{base}/still-here"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().await.unwrap(),
        "hello from hello: GET /still-here\n"
    );

    // the pod is Running and its container never restarted
    let (_, pod) = s.call(Method::GET, &format!("{PODS}/hello"), None).await;
    assert_eq!(pod["status"]["phase"], "Running");
    assert_eq!(pod["status"]["containerStatuses"][0]["restartCount"], 0);

    // deleting the pod stops serving
    let (code, _) = s.call(Method::DELETE, &format!("{PODS}/hello"), None).await;
    assert_eq!(code, 200);
    eventually(30, "the pod is gone", || async {
        let (code, _) = s.call(Method::GET, &format!("{PODS}/hello"), None).await;
        (code == 404).then_some(())
    })
    .await;
    assert!(http().get(format!("{base}/")).send().await.is_err());
}

#[tokio::test]
async fn a_function_over_its_concurrency_limit_answers_503() {
    let s = Server::start().await;
    let ip = start(
        &s,
        function_pod(
            "one-at-a-time",
            "hello_http",
            json!({"wasmkube.io/http-concurrency": "1", "wasmkube.io/http-timeout-seconds": "4"}),
            json!([]),
        ),
    )
    .await;
    let base = format!("http://{ip}:8080");
    first_answer(&format!("{base}/")).await;
    // A holds the only slot until it is cut off at 4 s; B (sent at 1 s)
    // waits and takes it then, until 8 s; C (sent at 2 s) waits until 6 s
    // for a slot that never frees in time: 503. Margins of a second or more.
    let a = tokio::spawn(http().get(format!("{base}/spin")).send());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let b = tokio::spawn(http().get(format!("{base}/spin")).send());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let c = http().get(format!("{base}/")).send().await.unwrap();
    assert_eq!(c.status(), 503);
    assert!(c.text().await.unwrap().contains("concurrency limit of 1"));
    assert_eq!(a.await.unwrap().unwrap().status(), 504);
    assert_eq!(b.await.unwrap().unwrap().status(), 504);
}

#[tokio::test]
async fn a_function_calls_another_service_by_name() {
    let s = Server::start().await;
    start(
        &s,
        function_pod("hello", "hello_http", json!({}), json!([])),
    )
    .await;
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "hello"},
        "spec": {"selector": {"app": "hello"}, "ports": [{"port": 80, "targetPort": "http"}]}});
    let (code, svc) = s.call(Method::POST, SVCS, Some(svc)).await;
    assert_eq!(code, 201, "{svc}");
    let ip = start(
        &s,
        function_pod(
            "fetcher",
            "fetcher",
            json!({}),
            json!([{"name": "UPSTREAM", "value": "http://hello.default.svc.cluster.local:80"}]),
        ),
    )
    .await;
    let text = first_answer(&format!("http://{ip}:8080/through?q=1")).await;
    assert_eq!(
        text,
        "fetched from http://hello.default.svc.cluster.local:80: hello from hello: GET /through?q=1\n"
    );
    // the Service's cluster IP reaches the function too
    let cluster_ip = svc["spec"]["clusterIP"].as_str().unwrap();
    let r = http()
        .get(format!("http://{cluster_ip}/via-service"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.text().await.unwrap(),
        "hello from hello: GET /via-service\n"
    );
}
