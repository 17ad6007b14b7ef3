//! `pods/exec` through the API server to the agent: wkctl exec (with and
//! without stdin, exit codes, errors) and kube-rs's exec over the same
//! WebSocket channel protocol. A Wasm exec is a fresh instance of the
//! container's module with its env and volumes.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams};
use reqwest::Method;
use tokio::io::AsyncReadExt;

use crate::util::{stderr, stdout, Server};

const PODS: &str = "/api/v1/namespaces/default/pods";

fn webserver_image() -> String {
    crate::util::example_image("wasm32-wasip2", "webserver")
}

async fn start_webserver(s: &Server, name: &str) {
    let node = s.node_name().await;
    let port = crate::util::free_port();
    let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {
        "nodeName": node,
        "containers": [{"name": "web", "image": webserver_image(),
            "env": [{"name": "PORT", "value": port.to_string()},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}]}});
    let (code, body) = s.call(Method::POST, PODS, Some(pod)).await;
    assert_eq!(code, 201, "{body}");
    s.wait_pod(name, &format!("{name} Running"), |p| {
        p["status"]["containerStatuses"][0]["state"]["running"].is_object()
    })
    .await;
}

#[tokio::test]
async fn wkctl_exec_runs_commands_in_a_wasm_container_with_its_env_and_stdin() {
    let s = Server::start().await;
    start_webserver(&s, "web-1").await;

    let out = s.wkctl(&["exec", "web-1", "--", "webserver", "env", "POD_NAME"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "web-1\n", "the exec sees the container's env");

    let out = s.wkctl(&["exec", "web-1", "-c", "web", "--", "webserver", "fail"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "not ok\n");
    assert_eq!(stderr(&out), "command terminated with exit code 1\n");

    let out = s.wkctl_stdin(
        &["exec", "-i", "web-1", "--", "webserver", "cat"],
        Some("line one\nline two\n"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "line one\nline two\n");

    // the container kept serving throughout
    let (_, p) = s.call(Method::GET, &format!("{PODS}/web-1"), None).await;
    assert_eq!(p["status"]["containerStatuses"][0]["restartCount"], 0);
    assert!(p["status"]["containerStatuses"][0]["state"]["running"].is_object());

    let out = s.wkctl(&["exec", "web-1", "-c", "nope", "--", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "error: container nope is not valid for pod web-1\n"
    );
    let out = s.wkctl(&["exec", "absent", "--", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "Error from server (NotFound): pods \"absent\" not found\n"
    );
}

#[tokio::test]
async fn kube_rs_exec_works_against_the_api() {
    let s = Server::start().await;
    start_webserver(&s, "web-2").await;
    let kc = kube::config::Kubeconfig::read_from(s.kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let pods: Api<Pod> = Api::namespaced(client, "default");

    let mut attached = pods
        .exec(
            "web-2",
            ["webserver", "env", "POD_NAME"],
            &AttachParams::default(),
        )
        .await
        .expect("kube-rs exec connects");
    let mut out = String::new();
    attached
        .stdout()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    let status = attached.take_status().unwrap().await.unwrap();
    assert_eq!(status.status.as_deref(), Some("Success"));
    assert_eq!(out, "web-2\n");

    let attached = pods
        .exec("web-2", ["webserver", "fail"], &AttachParams::default())
        .await
        .unwrap();
    let mut attached = attached;
    let status = attached.take_status().unwrap().await.unwrap();
    assert_eq!(status.reason.as_deref(), Some("NonZeroExitCode"));
    let cause = &status.details.unwrap().causes.unwrap()[0];
    assert_eq!(cause.message.as_deref(), Some("1"));
}

#[tokio::test]
async fn kubectl_exec_into_a_container_that_is_not_running_names_why() {
    let s = Server::start().await;
    let node = s.node_name().await;
    let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "crashy"}, "spec": {
        "nodeName": node,
        "containers": [{"name": "crash", "image": crate::util::example_image("wasm32-wasip1", "crashloop")}]}});
    let (code, body) = s.call(Method::POST, PODS, Some(pod)).await;
    assert_eq!(code, 201, "{body}");
    // in back-off after its second exit: 20 s before the next start
    s.wait_pod("crashy", "crashy in CrashLoopBackOff twice", |p| {
        let c = &p["status"]["containerStatuses"][0];
        c["restartCount"].as_u64() >= Some(2)
            && c["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    })
    .await;
    // kubectl tries a WebSocket, then SPDY/3.1 on any failed upgrade, and
    // prints the second answer: it must carry the agent's reason
    let out = s.kubectl(&["exec", "crashy", "--", "crashloop"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("container not found (\"crash\")") && !err.contains("Upgrade request"),
        "{err}"
    );
}
