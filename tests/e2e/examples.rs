//! The Rust example guests under `examples/`, built from source for
//! wasm32-wasip1 and wasm32-wasip2 by `bash tests/run.sh`, applied with the
//! real wkctl from their manifests.

use reqwest::Method;
use serde_json::Value;

use crate::util::{eventually, stderr, stdout, Server};

const PODS: &str = "/api/v1/namespaces/default/pods";

fn examples_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/target");
    for target in ["wasm32-wasip1", "wasm32-wasip2"] {
        let hello = dir.join(target).join("release/hello.wasm");
        assert!(
            hello.exists(),
            "{} is missing: `bash tests/run.sh` builds the example guests before the tests",
            hello.display()
        );
    }
    dir
}

/// Apply `examples/manifests/NAME.yaml` with its placeholders filled in.
async fn apply(s: &Server, name: &str) {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("examples/manifests/{name}.yaml")),
    )
    .unwrap();
    let text = text
        .replace("/WASMKUBE_EXAMPLES", &examples_dir().display().to_string())
        .replace("WASMKUBE_NODE", &s.node_name().await);
    let out = s.wkctl_stdin(&["apply", "-f", "-"], Some(&text));
    assert!(out.status.success(), "{}", stderr(&out));
}

async fn wait_phase(s: &Server, pod: &str, want: &str) -> Value {
    s.wait_pod(pod, &format!("{pod} {want}"), |p| {
        p["status"]["phase"] == want
    })
    .await
}

#[tokio::test]
async fn hello_runs_as_a_preview1_module_and_as_a_preview2_component() {
    let s = Server::start().await;
    apply(&s, "hello").await;
    wait_phase(&s, "hello-p1", "Succeeded").await;
    wait_phase(&s, "hello-p2", "Succeeded").await;
    let node = s.node_name().await;
    assert_eq!(
        stdout(&s.wkctl(&["logs", "hello-p1"])),
        format!("Hello from wasmkube! args=[\"one\", \"two\"]\nPOD_NAME=hello-p1\nNODE_NAME={node}\nGREETING=hi\n")
    );
    assert_eq!(
        stdout(&s.wkctl(&["logs", "hello-p2"])),
        "Hello from wasmkube! args=[\"component\"]\n"
    );
}

#[tokio::test]
async fn config_reaches_the_guest_as_env_and_mounted_files() {
    let s = Server::start().await;
    apply(&s, "config-reader").await;
    wait_phase(&s, "config-reader", "Succeeded").await;
    assert_eq!(
        stdout(&s.wkctl(&["logs", "config-reader"])),
        "env APP_LEVEL=debug\nenv APP_MODE=fast\nenv APP_PASSWORD=hunter2\n\
         file /config/APP_LEVEL=debug\nfile /config/APP_MODE=fast\nfile /config/greeting.txt=hello from a configmap\n"
    );
}

#[tokio::test]
async fn a_worker_writes_to_its_volume_while_a_busy_loop_holds_its_cpu_share() {
    let s = Server::start().await;
    apply(&s, "busyloop").await;
    wait_phase(&s, "busyloop", "Running").await;
    apply(&s, "worker").await;
    let p = wait_phase(&s, "worker", "Succeeded").await;
    // the busy loop is still spinning beside it
    let (_, busy) = s.call(Method::GET, &format!("{PODS}/busyloop"), None).await;
    assert_eq!(busy["status"]["phase"], "Running");
    assert!(busy["status"]["containerStatuses"][0]["state"]["running"].is_object());
    assert!(stdout(&s.wkctl(&["logs", "worker"])).ends_with("wrote tick 5\n"));
    let uid = p["metadata"]["uid"].as_str().unwrap();
    let file = s
        .dir
        .join("agent/pods")
        .join(uid)
        .join("volumes/empty/data/work.log");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "tick 1\ntick 2\ntick 3\ntick 4\ntick 5\n"
    );
}

#[tokio::test]
async fn the_memory_hog_is_oomkilled_and_the_crashlooper_backs_off() {
    let s = Server::builder()
        .arg("--backoff-base-ms")
        .arg("200")
        .start()
        .await;
    apply(&s, "memhog").await;
    apply(&s, "crashloop").await;
    let p = wait_phase(&s, "memhog", "Failed").await;
    assert_eq!(
        p["status"]["containerStatuses"][0]["state"]["terminated"]["reason"],
        "OOMKilled"
    );
    assert!(stdout(&s.wkctl(&["logs", "memhog"])).contains("holding 1 MiB"));
    eventually(30, "CrashLoopBackOff", || async {
        let (_, p) = s
            .call(Method::GET, &format!("{PODS}/crashloop"), None)
            .await;
        (p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff")
            .then_some(())
    })
    .await;
    let out = stdout(&s.wkctl(&["get", "pods"]));
    assert!(
        out.lines()
            .any(|l| l.starts_with("crashloop") && l.contains("CrashLoopBackOff")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("memhog") && l.contains("OOMKilled")),
        "{out}"
    );
}

#[tokio::test]
async fn pods_keep_running_while_the_control_plane_is_down_and_the_agent_resyncs() {
    let port = crate::util::free_port();
    let mut s = Server::builder()
        .arg("--disable-agent")
        .arg("--listen")
        .arg(&format!("127.0.0.1:{port}"))
        .start()
        .await;
    let _agent = crate::util::AgentProc::start(&s, "edge-1");
    s.node_name().await;
    let host = tempfile::tempdir().unwrap();
    let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ticker"}, "spec": {
        "nodeName": "edge-1",
        "volumes": [{"name": "data", "hostPath": {"path": host.path()}}],
        "containers": [{"name": "w", "image": format!("file://{}/wasm32-wasip1/release/worker.wasm", examples_dir().display()),
            "args": ["0", "50"], "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}});
    s.call(Method::POST, PODS, Some(pod)).await;
    wait_phase(&s, "ticker", "Running").await;
    let ticks = || {
        std::fs::read_to_string(host.path().join("work.log"))
            .unwrap_or_default()
            .lines()
            .count()
    };

    s.kill9();
    let at_kill = ticks();
    eventually(
        20,
        "the pod keeps working without the control plane",
        || async { (ticks() > at_kill + 10).then_some(()) },
    )
    .await;

    s.restart().await;
    assert!(
        s.url.ends_with(&format!(":{port}")),
        "same address after restart"
    );
    // the agent reconnects: it still reports the pod, and acts on a deletion
    let p = wait_phase(&s, "ticker", "Running").await;
    assert_eq!(
        p["status"]["containerStatuses"][0]["restartCount"], 0,
        "the pod was never restarted"
    );
    s.call(Method::DELETE, &format!("{PODS}/ticker"), None)
        .await;
    eventually(30, "the agent removes the deleted pod", || async {
        (s.call(Method::GET, &format!("{PODS}/ticker"), None).await.0 == 404).then_some(())
    })
    .await;
    let stopped_at = ticks();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(ticks(), stopped_at, "the guest stopped with its pod");
}
