//! The node agent running Wasm pods: embedded in `wk server` and as separate
//! `wk agent` processes. Fixtures are `.wat` compiled with the `wat` crate.

use reqwest::Method;
use serde_json::{json, Value};

use crate::util::{eventually, stdout, AgentProc, Server};

const PODS: &str = "/api/v1/namespaces/default/pods";

/// Prints its first argument, then exits with `code`.
fn print_and_exit(code: i32) -> String {
    format!(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
          (memory (export "memory") 1)
          (data (i32.const 64) "hello from wasm\n")
          (func (export "_start")
            (i32.store (i32.const 0) (i32.const 64))
            (i32.store (i32.const 4) (i32.const 16))
            (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
            (call $exit (i32.const {code}))))"#
    )
}

const TRAP: &str = r#"(module (memory (export "memory") 1) (func (export "_start") unreachable))"#;
const HOG: &str = r#"(module (memory (export "memory") 1) (func (export "_start") (loop $l (drop (memory.grow (i32.const 1))) (br $l))))"#;
const SPIN: &str =
    r#"(module (memory (export "memory") 1) (func (export "_start") (loop $l (br $l))))"#;

/// Write a fixture under the server's data dir and return its image reference.
fn image(s: &Server, name: &str, wat: &str) -> String {
    let path = s.dir.join(format!("{name}.wasm"));
    std::fs::write(&path, wat::parse_str(wat).unwrap()).unwrap();
    format!("file://{}", path.display())
}

fn pod(name: &str, node: &str, image: &str, restart: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"nodeName": node, "restartPolicy": restart, "containers": [{"name": "main", "image": image}]}})
}

/// The pod's events once `done` holds for them (events are written in the
/// background, so they may trail the pod's status a little).
async fn events_once(
    s: &Server,
    name: &str,
    done: impl Fn(&[(String, String)]) -> bool,
) -> Vec<(String, String)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let events = events_for(s, name).await;
        if done(&events) {
            return events;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the events of {name} never showed what was expected: {events:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn events_for(s: &Server, name: &str) -> Vec<(String, String)> {
    let (_, l) = s
        .call(
            Method::GET,
            &format!(
                "/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3D{name}"
            ),
            None,
        )
        .await;
    l["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["reason"].as_str().unwrap().to_string(),
                e["message"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn phase(p: &Value) -> &str {
    p["status"]["phase"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn the_embedded_node_registers_and_runs_a_pod_to_completion() {
    let s = Server::builder()
        .arg("--backoff-base-ms")
        .arg("200")
        .arg("--heartbeat-ms")
        .arg("500")
        .start()
        .await;
    let node = s.node_name().await;
    let (_, n) = s
        .call(Method::GET, &format!("/api/v1/nodes/{node}"), None)
        .await;
    assert_eq!(n["metadata"]["labels"]["kubernetes.io/os"], "linux");
    assert_eq!(
        n["metadata"]["labels"]["kubernetes.io/hostname"],
        node.as_str()
    );
    assert!(
        n["status"]["capacity"]["cpu"].is_string() && n["status"]["allocatable"]["pods"] == "1000"
    );
    assert_eq!(n["status"]["conditions"][0]["type"], "Ready");
    assert_eq!(n["status"]["conditions"][0]["status"], "True");
    eventually(10, "the node lease", || async {
        let (code, l) = s
            .call(
                Method::GET,
                &format!("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node}"),
                None,
            )
            .await;
        (code == 200 && l["spec"]["holderIdentity"] == node.as_str()).then_some(())
    })
    .await;

    let img = image(&s, "hello", &print_and_exit(0));
    s.call(Method::POST, PODS, Some(pod("hello", &node, &img, "Never")))
        .await;
    let p = s
        .wait_pod("hello", "Succeeded", |p| phase(p) == "Succeeded")
        .await;
    let cs = &p["status"]["containerStatuses"][0];
    assert_eq!(cs["state"]["terminated"]["exitCode"], 0);
    assert_eq!(cs["state"]["terminated"]["reason"], "Completed");
    assert_eq!(cs["restartCount"], 0);
    assert!(cs["containerID"].as_str().unwrap().starts_with("wasm://"));
    assert!(p["status"]["podIP"].as_str().unwrap().starts_with("127."));
    assert_eq!(p["status"]["hostIP"], "127.0.0.1");
    assert!(p["status"]["startTime"].is_string());
    let conds: Vec<(String, String)> = p["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap().into(),
                c["status"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        conds.contains(&("PodScheduled".into(), "True".into()))
            && conds.contains(&("Initialized".into(), "True".into()))
            && conds.contains(&("Ready".into(), "False".into())),
        "{conds:?}"
    );
    let wanted = ["Pulling", "Pulled", "Created", "Started"];
    events_once(&s, "hello", |events| {
        wanted.iter().all(|w| events.iter().any(|(r, _)| r == w))
    })
    .await;
    // wkctl shows it
    let out = stdout(&s.wkctl(&["get", "pods"]));
    assert!(
        out.lines()
            .any(|l| l.starts_with("hello") && l.contains("Completed")),
        "{out}"
    );
}

#[tokio::test]
async fn exit_codes_traps_and_memory_limits_reach_the_pod_status() {
    let s = Server::builder()
        .arg("--backoff-base-ms")
        .arg("200")
        .start()
        .await;
    let node = s.node_name().await;
    s.call(
        Method::POST,
        PODS,
        Some(pod(
            "exit3",
            &node,
            &image(&s, "exit3", &print_and_exit(3)),
            "Never",
        )),
    )
    .await;
    s.call(
        Method::POST,
        PODS,
        Some(pod("trap", &node, &image(&s, "trap", TRAP), "Never")),
    )
    .await;
    let mut hog = pod("hog", &node, &image(&s, "hog", HOG), "Never");
    hog["spec"]["containers"][0]["resources"] = json!({"limits": {"memory": "4Mi"}});
    s.call(Method::POST, PODS, Some(hog)).await;

    let p = s
        .wait_pod("exit3", "exit3 fails", |p| phase(p) == "Failed")
        .await;
    let t = &p["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(
        (t["exitCode"].as_i64(), t["reason"].as_str()),
        (Some(3), Some("Error"))
    );
    let p = s
        .wait_pod("trap", "trap fails", |p| phase(p) == "Failed")
        .await;
    let t = &p["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(t["reason"], "Error");
    assert!(
        t["message"].as_str().unwrap().contains("unreachable"),
        "{t}"
    );
    let p = s
        .wait_pod("hog", "hog is killed", |p| phase(p) == "Failed")
        .await;
    let t = &p["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(
        (t["exitCode"].as_i64(), t["reason"].as_str()),
        (Some(137), Some("OOMKilled"))
    );
}

#[tokio::test]
async fn a_crashing_container_restarts_with_back_off() {
    let s = Server::builder()
        .arg("--backoff-base-ms")
        .arg("200")
        .start()
        .await;
    let node = s.node_name().await;
    s.call(
        Method::POST,
        PODS,
        Some(pod(
            "crash",
            &node,
            &image(&s, "crash", &print_and_exit(1)),
            "Always",
        )),
    )
    .await;
    let p = s
        .wait_pod("crash", "CrashLoopBackOff", |p| {
            p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff"
                && p["status"]["containerStatuses"][0]["restartCount"]
                    .as_i64()
                    .unwrap_or(0)
                    >= 2
        })
        .await;
    let cs = &p["status"]["containerStatuses"][0];
    assert_eq!(cs["lastState"]["terminated"]["exitCode"], 1);
    assert_eq!(
        phase(&p),
        "Running",
        "restartPolicy Always keeps the pod Running"
    );
    events_once(&s, "crash", |events| {
        events
            .iter()
            .any(|(r, m)| r == "BackOff" && m.contains("Back-off restarting failed container main"))
    })
    .await;
    // OnFailure stops restarting after a success
    s.call(
        Method::POST,
        PODS,
        Some(pod(
            "once",
            &node,
            &image(&s, "ok", &print_and_exit(0)),
            "OnFailure",
        )),
    )
    .await;
    let p = s
        .wait_pod("once", "Succeeded", |p| phase(p) == "Succeeded")
        .await;
    assert_eq!(p["status"]["containerStatuses"][0]["restartCount"], 0);
}

#[tokio::test]
async fn deleting_a_running_pod_stops_it_and_removes_the_object() {
    let s = Server::start().await;
    let node = s.node_name().await;
    s.call(
        Method::POST,
        PODS,
        Some(pod("spin", &node, &image(&s, "spin", SPIN), "Always")),
    )
    .await;
    s.wait_pod("spin", "Running", |p| {
        phase(p) == "Running" && p["status"]["containerStatuses"][0]["ready"] == true
    })
    .await;
    let (code, marked) = s.call(Method::DELETE, &format!("{PODS}/spin"), None).await;
    assert_eq!(code, 200);
    assert!(
        marked["metadata"]["deletionTimestamp"].is_string(),
        "a bound running pod is deleted gracefully: {marked}"
    );
    assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 30);
    eventually(30, "the agent removes the pod", || async {
        (s.call(Method::GET, &format!("{PODS}/spin"), None).await.0 == 404).then_some(())
    })
    .await;
    events_once(&s, "spin", |events| {
        events.iter().any(|(r, _)| r == "Killing")
    })
    .await;
    // an unbound pod (one for another scheduler, so ours leaves it) is deleted at once
    let mut unbound = pod("unbound", "", "file:///x.wasm", "Always");
    unbound["spec"]["schedulerName"] = json!("someone-else");
    let (_, p) = s.call(Method::POST, PODS, Some(unbound)).await;
    assert!(p["spec"].get("nodeName").is_none_or(|n| n == ""));
    let (_, gone) = s
        .call(Method::DELETE, &format!("{PODS}/unbound"), None)
        .await;
    assert!(gone["metadata"].get("deletionTimestamp").is_none());
    assert_eq!(
        s.call(Method::GET, &format!("{PODS}/unbound"), None)
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn bad_images_report_pull_and_create_errors_with_events() {
    let s = Server::builder()
        .arg("--backoff-base-ms")
        .arg("200")
        .start()
        .await;
    let node = s.node_name().await;
    s.call(
        Method::POST,
        PODS,
        Some(pod(
            "missing",
            &node,
            "file:///no/such/module.wasm",
            "Always",
        )),
    )
    .await;
    let bad = s.dir.join("bad.wasm");
    std::fs::write(&bad, b"\0asm\x01\0\0\0\x7fnot-a-section").unwrap();
    s.call(
        Method::POST,
        PODS,
        Some(pod(
            "invalid",
            &node,
            &format!("file://{}", bad.display()),
            "Always",
        )),
    )
    .await;
    s.wait_pod("missing", "image pull back-off", |p| {
        matches!(
            p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"].as_str(),
            Some("ErrImagePull" | "ImagePullBackOff")
        )
    })
    .await;
    let p = s
        .wait_pod("invalid", "CreateContainerError", |p| {
            p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
                == "CreateContainerError"
        })
        .await;
    let msg = p["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!msg.is_empty(), "wasmtime's reason is carried");
    let events = eventually(10, "pull failure and back-off events", || async {
        let events = events_for(&s, "missing").await;
        (events
            .iter()
            .any(|(r, m)| r == "Failed" && m.contains("ErrImagePull"))
            && events.iter().any(|(r, _)| r == "BackOff"))
        .then_some(events)
    })
    .await;
    assert!(
        events.iter().any(|(_, m)| m.contains("No such file")),
        "{events:?}"
    );
    events_once(&s, "invalid", |events| {
        events
            .iter()
            .any(|(r, m)| r == "Failed" && m.contains("CreateContainerError"))
    })
    .await;
}

#[tokio::test]
async fn separate_agents_run_their_own_pods_and_come_back_after_kill_9() {
    let s = Server::builder().arg("--disable-agent").start().await;
    let mut a = AgentProc::start(&s, "node-a");
    let _b = AgentProc::start(&s, "node-b");
    eventually(30, "both nodes register", || async {
        let (_, l) = s.call(Method::GET, "/api/v1/nodes", None).await;
        let mut names: Vec<String> = l["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        (names == ["node-a", "node-b"]).then_some(())
    })
    .await;
    let hello = image(&s, "hello", &print_and_exit(0));
    s.call(
        Method::POST,
        PODS,
        Some(pod("on-a", "node-a", &hello, "Never")),
    )
    .await;
    s.call(
        Method::POST,
        PODS,
        Some(pod("on-b", "node-b", &hello, "Never")),
    )
    .await;
    s.call(
        Method::POST,
        PODS,
        Some(pod("spin-a", "node-a", &image(&s, "spin", SPIN), "Always")),
    )
    .await;
    s.wait_pod("on-a", "on-a succeeds", |p| phase(p) == "Succeeded")
        .await;
    s.wait_pod("on-b", "on-b succeeds", |p| phase(p) == "Succeeded")
        .await;
    let before = s
        .wait_pod("spin-a", "spin-a runs", |p| phase(p) == "Running")
        .await;
    let started = before["status"]["containerStatuses"][0]["state"]["running"]["startedAt"].clone();
    // startedAt has one-second resolution: restart in a later second so it can differ
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    a.kill9();
    a.restart();
    // the restarted agent brings its running pod back: same object, started again
    let after = s
        .wait_pod("spin-a", "spin-a runs again", |p| {
            phase(p) == "Running"
                && p["status"]["containerStatuses"][0]["state"]["running"]["startedAt"].is_string()
                && p["status"]["containerStatuses"][0]["state"]["running"]["startedAt"] != started
        })
        .await;
    assert_eq!(after["metadata"]["uid"], before["metadata"]["uid"]);
    let (_, l) = s.call(Method::GET, PODS, None).await;
    assert_eq!(l["items"].as_array().unwrap().len(), 3, "no duplicates");
    // a completed pod is not run again
    let (_, on_a) = s.call(Method::GET, &format!("{PODS}/on-a"), None).await;
    assert_eq!(phase(&on_a), "Succeeded");
}

/// Prints a line, then spins forever.
const PRINT_THEN_SPIN: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "still running\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 14))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (loop $l (br $l))))"#;

#[tokio::test]
async fn wkctl_logs_reads_current_previous_and_followed_output_through_the_api() {
    use std::io::{BufRead, BufReader};
    let s = Server::builder()
        .arg("--backoff-base-ms")
        .arg("200")
        .start()
        .await;
    let node = s.node_name().await;
    s.call(
        Method::POST,
        PODS,
        Some(pod(
            "hello",
            &node,
            &image(&s, "hello", &print_and_exit(0)),
            "Never",
        )),
    )
    .await;
    s.call(
        Method::POST,
        PODS,
        Some(pod(
            "crash",
            &node,
            &image(&s, "crash", &print_and_exit(1)),
            "Always",
        )),
    )
    .await;
    s.call(
        Method::POST,
        PODS,
        Some(pod(
            "live",
            &node,
            &image(&s, "live", PRINT_THEN_SPIN),
            "Always",
        )),
    )
    .await;
    s.wait_pod("hello", "Succeeded", |p| phase(p) == "Succeeded")
        .await;

    let out = s.wkctl(&["logs", "hello"]);
    assert_eq!(
        stdout(&out),
        "hello from wasm\n",
        "{}",
        crate::util::stderr(&out)
    );
    let ts = stdout(&s.wkctl(&["logs", "hello", "--timestamps"]));
    let (stamp, text) = ts.trim_end().split_once(' ').unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(stamp).is_ok(), "{ts}");
    assert_eq!(text, "hello from wasm");
    assert_eq!(stdout(&s.wkctl(&["logs", "hello", "--tail", "0"])), "");

    s.wait_pod("crash", "a restart", |p| {
        p["status"]["containerStatuses"][0]["restartCount"]
            .as_i64()
            .unwrap_or(0)
            >= 1
    })
    .await;
    assert_eq!(
        stdout(&s.wkctl(&["logs", "crash", "--previous"])),
        "hello from wasm\n"
    );

    s.wait_pod("live", "live runs", |p| phase(p) == "Running")
        .await;
    let mut follow = std::process::Command::new(crate::util::WKCTL)
        .args(["logs", "-f", "live"])
        .env("KUBECONFIG", s.kubeconfig())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "still running");
    // still attached: the stream only ends when the container stops
    assert!(follow.try_wait().unwrap().is_none());
    s.call(Method::DELETE, &format!("{PODS}/live"), None).await;
    let status = follow.wait().unwrap();
    assert!(
        status.success(),
        "logs -f ends cleanly when the container stops"
    );

    let out = s.wkctl(&["logs", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        crate::util::stderr(&out),
        "Error from server (NotFound): pods \"nope\" not found\n"
    );
    let mut unbound = pod("unbound", "", "file:///x.wasm", "Always");
    unbound["spec"]["schedulerName"] = json!("someone-else");
    s.call(Method::POST, PODS, Some(unbound)).await;
    let out = s.wkctl(&["logs", "unbound"]);
    assert!(
        crate::util::stderr(&out).contains("does not have a host assigned"),
        "{}",
        crate::util::stderr(&out)
    );
    let out = s.wkctl(&["logs", "hello", "-c", "other"]);
    assert!(crate::util::stderr(&out).contains("container other is not valid for pod hello"));
}
