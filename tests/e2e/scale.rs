//! Density on one node: many idle Wasm pods on one `wk server` started
//! with the usual soft open-file limit (1024). The server raises it to the
//! hard limit at start, as container runtimes do, and each pod holds one
//! descriptor per preopened directory (its log is open only while
//! written). The big runs (10,000 pods, 5,000 nodes) are in `wk-bench`;
//! this is the short one.

use futures::StreamExt;
use reqwest::Method;
use serde_json::json;

use crate::util::Server;

const PODS: &str = "/api/v1/namespaces/default/pods";

/// Sleeps for an hour in one `poll_oneoff` (a relative clock subscription).
const IDLE: &str = r#"(module
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    ;; subscription at 0: userdata 0, tag 0 (clock), id 1 (monotonic),
    ;; timeout 3600 s in ns, precision 0, flags 0 (relative)
    (i32.store8 (i32.const 8) (i32.const 0))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 3600000000000))
    (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))))"#;

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test]
async fn two_thousand_idle_pods_start_within_the_default_open_file_limit() {
    const N: usize = 2000;
    let s = Server::builder()
        .open_files(1024)
        .arg("--max-pods")
        .arg("2100")
        .start()
        .await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", s.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_string();
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        cols[3], cols[4],
        "the server raised its soft limit to the hard one: {line}"
    );
    let node = s.node_name().await;
    let path = s.dir.join("idle.wasm");
    std::fs::write(&path, wat::parse_str(IDLE).unwrap()).unwrap();
    let image = format!("file://{}", path.display());
    let before = open_files(s.pid());

    let created = futures::stream::iter(0..N)
        .map(|i| {
            let (s, node, image) = (&s, &node, &image);
            async move {
                let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("idle-{i}")},
                    "spec": {"nodeName": node, "containers": [{"name": "main", "image": image}]}});
                s.call(Method::POST, PODS, Some(pod)).await.0
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<u16>>()
        .await;
    assert!(created.iter().all(|c| *c == 201), "every pod was created");

    // a list of 2,000 pods is big: look every two seconds, not every 50 ms
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(400);
    let running = loop {
        let (_, list) = s.call(Method::GET, PODS, None).await;
        let items = list["items"].as_array().cloned().unwrap_or_default();
        let running = items
            .iter()
            .filter(|p| p["status"]["phase"] == "Running")
            .count();
        let failed: Vec<_> = items
            .iter()
            .filter(|p| p["status"]["phase"] == "Failed")
            .map(|p| p["metadata"]["name"].clone())
            .collect();
        assert!(failed.is_empty(), "pods failed: {failed:?}");
        if running == N {
            break running;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{running} of {N} pods Running after 400 s"
        );
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    };
    assert_eq!(running, N);
    let after = open_files(s.pid());
    let per_pod = (after - before) as f64 / N as f64;
    eprintln!("open files: {before} before, {after} with {N} idle pods ({per_pod:.2} per pod)");
    assert!(
        after > 1024,
        "the pods needed more than the default soft limit ({after} open)"
    );
    // the preopened token directory; a quiet container's log is closed
    assert!(
        per_pod <= 1.5,
        "{per_pod:.2} descriptors per idle pod (a preopened directory each)"
    );
}
