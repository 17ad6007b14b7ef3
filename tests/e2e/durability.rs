//! Durability and recovery: kill -9 during writes, clean shutdown, and the
//! snapshot save/restore round trip, with real processes and redb files.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use crate::util::{configmap, stderr, stdout, wk, Server};

const CM: &str = "/api/v1/namespaces/default/configmaps";

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn kill_9_during_a_stream_of_writes_keeps_every_acknowledged_write() {
    let mut s = Server::start().await;
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..8 {
        let url = s.url.clone();
        let http = s.http.clone();
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let name = format!("w{w}-{i}");
                let value = format!("{w}:{i}");
                let r = http
                    .post(format!("{url}{CM}"))
                    .json(&configmap(&name, &value))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().as_u16() == 201 => {
                        acked.lock().unwrap().push((name, value))
                    }
                    _ => return,
                }
            }
        }));
    }
    while acked.lock().unwrap().len() < 200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.kill9();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    s.restart().await;
    let (code, list) = s.call(Method::GET, CM, None).await;
    assert_eq!(code, 200);
    let stored: std::collections::HashMap<String, String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["metadata"]["name"] != "kube-root-ca.crt")
        .map(|i| {
            (
                i["metadata"]["name"].as_str().unwrap().to_string(),
                i["data"]["v"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (name, value) in &acked {
        assert_eq!(
            stored.get(name),
            Some(value),
            "acknowledged write {name} lost after kill -9 ({} acked)",
            acked.len()
        );
    }
    // and the store keeps working after recovery
    assert_eq!(
        s.call(Method::POST, CM, Some(configmap("after", "1")))
            .await
            .0,
        201
    );
}

// multi-threaded: `terminate` blocks its thread while the watch's HTTP/2
// connection must still answer the server's goodbye
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_cleanly_and_revisions_continue_after_restart() {
    let mut s = Server::start().await;
    let (_, last) = s.call(Method::POST, CM, Some(configmap("kept", "1"))).await;
    // an open watch must not hold the shutdown up
    let watch = s
        .http
        .get(format!("{}{CM}?watch=true", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(watch.status().as_u16(), 200);
    let started = std::time::Instant::now();
    assert!(s.terminate(), "wk server exits 0 on SIGTERM: {}", s.log());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown waited for the watch: {}",
        s.log()
    );
    drop(watch);
    assert!(s.log().contains("wk server stopped"));
    s.restart().await;
    let (code, kept) = s.call(Method::GET, &format!("{CM}/kept"), None).await;
    assert_eq!(code, 200);
    assert_eq!(kept["metadata"]["uid"], last["metadata"]["uid"]);
    let (_, next) = s.call(Method::POST, CM, Some(configmap("next", "1"))).await;
    let rv = |v: &Value| {
        v["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert!(rv(&next) > rv(&last));
    // the token and kubeconfig survive restarts
    assert_eq!(
        s.join_token,
        std::fs::read_to_string(s.dir.join("token")).unwrap().trim()
    );
}

#[tokio::test]
async fn snapshot_save_and_restore_round_trip() {
    let s = Server::start().await;
    s.call(
        Method::POST,
        "/api/v1/namespaces",
        Some(serde_json::json!({"metadata": {"name": "apps"}})),
    )
    .await;
    for i in 0..20 {
        s.call(
            Method::POST,
            "/api/v1/namespaces/apps/configmaps",
            Some(configmap(&format!("c{i}"), &i.to_string())),
        )
        .await;
    }
    s.call(
        Method::DELETE,
        "/api/v1/namespaces/apps/configmaps/c3",
        None,
    )
    .await;
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("snap.json");
    let out = wk(&[
        "snapshot",
        "save",
        file.to_str().unwrap(),
        "--kubeconfig",
        s.kubeconfig().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with(&format!("Snapshot saved at {}", file.display())));
    // writes after the snapshot are not in it
    s.call(
        Method::POST,
        "/api/v1/namespaces/apps/configmaps",
        Some(configmap("later", "1")),
    )
    .await;
    let (_, before) = s
        .call(Method::GET, "/api/v1/namespaces/apps/configmaps", None)
        .await;

    let restored_dir = work.path().join("restored");
    // Secrets in the snapshot are sealed: without the key it is refused, clearly
    let no_key = wk(&[
        "snapshot",
        "restore",
        file.to_str().unwrap(),
        "--data-dir",
        restored_dir.to_str().unwrap(),
    ]);
    assert!(!no_key.status.success());
    assert!(
        stderr(&no_key).contains("copy cred/encryption-config.json"),
        "{}",
        stderr(&no_key)
    );
    assert!(!restored_dir.join("raft").exists(), "nothing half-made");
    // as docs/security.md says: carry the cluster's keys with the snapshot
    // (cred/ to decrypt Secrets, tls/ to keep the cluster's identity)
    crate::util::copy_cluster_keys(&s.dir, &restored_dir);
    let out = wk(&[
        "snapshot",
        "restore",
        file.to_str().unwrap(),
        "--data-dir",
        restored_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let again = wk(&[
        "snapshot",
        "restore",
        file.to_str().unwrap(),
        "--data-dir",
        restored_dir.to_str().unwrap(),
    ]);
    assert!(
        !again.status.success(),
        "restoring over an existing store is refused"
    );
    assert!(
        stderr(&again).contains("already holds a store"),
        "{}",
        stderr(&again)
    );
    let garbage = work.path().join("garbage.json");
    std::fs::write(
        &garbage,
        "{\"format\": \"something-else\", \"revision\": 1, \"objects\": []}",
    )
    .unwrap();
    let bad = wk(&[
        "snapshot",
        "restore",
        garbage.to_str().unwrap(),
        "--data-dir",
        work.path().join("bad").to_str().unwrap(),
    ]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("format"), "{}", stderr(&bad));

    let r = Server::builder().data_dir(&restored_dir).start().await;
    let (_, after) = r
        .call(Method::GET, "/api/v1/namespaces/apps/configmaps", None)
        .await;
    let mut expected: Vec<Value> = before["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["metadata"]["name"] != "later")
        .cloned()
        .collect();
    expected.sort_by_key(|i| i["metadata"]["name"].as_str().unwrap().to_string());
    let mut got = after["items"].as_array().unwrap().clone();
    got.sort_by_key(|i| i["metadata"]["name"].as_str().unwrap().to_string());
    assert_eq!(
        got, expected,
        "restored objects are identical (uids, revisions, data)"
    );
    assert!(!names(&after).contains(&"c3".to_string()));
    let snap_rv: u64 = after["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let (code, new) = r
        .call(
            Method::POST,
            "/api/v1/namespaces/apps/configmaps",
            Some(configmap("new", "1")),
        )
        .await;
    assert_eq!(code, 201);
    assert!(
        new["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > snap_rv
    );
    // the restored cluster also restarts from its own files
    drop(r);
    let r = Server::builder().data_dir(&restored_dir).start().await;
    assert_eq!(
        r.call(Method::GET, "/api/v1/namespaces/apps/configmaps/new", None)
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn kill_9_after_snapshots_and_log_purges_recovers_everything() {
    let mut s = Server::builder()
        .arg("--snapshot-logs")
        .arg("40")
        .start()
        .await;
    let mut acked = Vec::new();
    for i in 0..300 {
        let (code, obj) = s
            .call(
                Method::POST,
                CM,
                Some(configmap(&format!("s{i}"), &i.to_string())),
            )
            .await;
        assert_eq!(code, 201);
        acked.push(obj);
    }
    // updates land after the last snapshot too
    for i in 0..10 {
        let (code, _) = s
            .call_as(
                Method::PATCH,
                &format!("{CM}/s{i}"),
                Some(serde_json::json!({"data": {"v": "updated"}})),
                "application/merge-patch+json",
            )
            .await;
        assert_eq!(code, 200);
    }
    s.kill9();
    {
        // the log really was compacted: its first entry is past the start
        let log = wasmkube::store::log_store::LogStore::open(&s.dir.join("raft/wal")).unwrap();
        let (first, _) = log.bounds().expect("entries in the log");
        assert!(
            first > 100,
            "log purged behind snapshots (first index {first})"
        );
    }
    s.restart().await;
    let (_, list) = s.call(Method::GET, CM, None).await;
    let items = list["items"].as_array().unwrap();
    // and the namespace's kube-root-ca.crt
    assert_eq!(items.len(), 301);
    for obj in &acked {
        let name = obj["metadata"]["name"].as_str().unwrap();
        let (code, got) = s.call(Method::GET, &format!("{CM}/{name}"), None).await;
        assert_eq!(code, 200, "{name} lost");
        assert_eq!(got["metadata"]["uid"], obj["metadata"]["uid"]);
        let i: usize = name[1..].parse().unwrap();
        let want = if i < 10 {
            "updated".to_string()
        } else {
            i.to_string()
        };
        assert_eq!(got["data"]["v"], want.as_str(), "{name}");
    }
}
