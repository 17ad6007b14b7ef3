//! Linux containers through runc beside Wasm: images the test builds from
//! Debian's busybox-static and pushes to a real registry (Debian's
//! docker-registry) or imports from a tarball, run with the real kubectl.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use serde_json::{json, Value};

use crate::registry::Registry;
use crate::util::{eventually, example_image, stderr, stdout, wk, Server};

const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "echo", "sleep", "cat", "ls", "httpd", "wget", "id", "head", "tail", "true", "false",
    "env", "hostname", "ps", "kill", "mkdir", "touch", "date", "seq", "tty", "trap", "nslookup",
    "stty",
];

/// A root filesystem layer (tar) holding busybox-static, its applets, a
/// passwd with a `www` user and a page to serve.
fn busybox_layer() -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox")
        .expect("/bin/busybox (apt-get install busybox-static; tests/run.sh installs it)");
    let mut b = tar::Builder::new(Vec::new());
    let dir = |b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        b.append_data(&mut h, path, &[][..]).unwrap();
    };
    let file = |b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, data).unwrap();
    };
    for (d, m) in [
        ("bin", 0o755),
        ("etc", 0o755),
        ("tmp", 0o1777),
        ("var", 0o755),
        ("var/www", 0o755),
        ("root", 0o700),
    ] {
        dir(&mut b, d, m);
    }
    file(&mut b, "bin/busybox", 0o755, &busybox);
    for a in BUSYBOX_APPLETS {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, format!("bin/{a}"), "busybox")
            .unwrap();
    }
    file(
        &mut b,
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/var/www:/bin/sh\n",
    );
    file(&mut b, "etc/group", 0o644, b"root:x:0:\nwww:x:33:\n");
    file(
        &mut b,
        "var/www/index.html",
        0o644,
        b"hello from busybox httpd\n",
    );
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

fn sha256(data: &[u8]) -> String {
    wasmkube_runtime::image::digest(data)
}

fn image_config(layer: &[u8], arch: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": arch, "os": "linux",
        "config": {"Env": ["PATH=/bin", "FROM_IMAGE=yes"], "Cmd": ["sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [sha256(layer)]}
    }))
    .unwrap()
}

/// Push the busybox image as `repo_tag`; returns its reference.
async fn push_busybox(reg: &Registry, repo_tag: &str) -> String {
    push_busybox_with(reg, repo_tag, &RegistryAuth::Anonymous).await
}

/// [`push_busybox`] with credentials.
async fn push_busybox_with(reg: &Registry, repo_tag: &str, auth: &RegistryAuth) -> String {
    push_busybox_for(
        reg,
        repo_tag,
        auth,
        wasmkube_runtime::oci::images::host_arch(),
    )
    .await
}

/// [`push_busybox`] with credentials, its config naming `arch`.
async fn push_busybox_for(
    reg: &Registry,
    repo_tag: &str,
    auth: &RegistryAuth,
    arch: &str,
) -> String {
    let layer = busybox_layer();
    let client = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    });
    let reference = format!("127.0.0.1:{}/{repo_tag}", reg.port);
    let layers = [ImageLayer::new(
        gzip(&layer),
        "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        None,
    )];
    let config = Config::new(
        image_config(&layer, arch),
        "application/vnd.oci.image.config.v1+json".into(),
        None,
    );
    client
        .push(&reference.parse().unwrap(), &layers, config, auth, None)
        .await
        .expect("push the busybox image");
    reference
}

async fn server() -> Server {
    Server::builder()
        .arg("--backoff-base-ms")
        .arg("200")
        .start()
        .await
}

fn apply(s: &Server, manifest: &Value) {
    let out = crate::util::kubectl_stdin(
        &s.kubeconfig(),
        &["apply", "-f", "-"],
        Some(&manifest.to_string()),
    );
    assert!(out.status.success(), "kubectl apply: {}", stderr(&out));
}

async fn running(s: &Server, name: &str) -> Value {
    s.wait_pod(name, &format!("{name} running and ready"), |p| {
        p["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
    .await
}

/// The containers runc holds for the test's node (one id per line).
fn runc_containers(s: &Server) -> String {
    let out = std::process::Command::new("runc")
        .arg("--root")
        .arg(s.dir.join("agent/oci/runc"))
        .args(["list", "-q"])
        .output()
        .unwrap();
    stdout(&out).trim().to_string()
}

/// The log of a container, as kubectl shows it.
fn logs(s: &Server, args: &[&str]) -> String {
    let mut all = vec!["logs"];
    all.extend_from_slice(args);
    stdout(&s.kubectl(&all))
}

/// GET `url` (no proxy) until it answers 2xx, for up to `secs`; the body.
async fn get_ok(secs: u64, what: &str, url: String) -> String {
    eventually(secs, what, || {
        let url = url.clone();
        async move {
            let r = reqwest::Client::builder()
                .no_proxy()
                .build()
                .unwrap()
                .get(url)
                .send()
                .await
                .ok()?;
            r.status().is_success().then_some(r.text().await.ok()?)
        }
    })
    .await
}

#[tokio::test]
async fn busybox_httpd_serves_behind_a_service_with_logs_exec_and_a_shell() {
    let reg = Registry::start(None).await;
    let image = push_busybox(&reg, "tools/busybox:1").await;
    let s = server().await;
    apply(
        &s,
        &json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "httpd"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "httpd"}},
                "template": {"metadata": {"labels": {"app": "httpd"}}, "spec": {"terminationGracePeriodSeconds": 3, "containers": [{
                    "name": "httpd", "image": image,
                    "command": ["sh", "-c", "echo serving as $(id -u) from $FROM_IMAGE; exec httpd -f -v -p 8080 -h /var/www"],
                    "ports": [{"containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
                    "securityContext": {"runAsUser": 33}}]}}}}),
    );
    apply(
        &s,
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "httpd"},
            "spec": {"selector": {"app": "httpd"}, "ports": [{"port": 80, "targetPort": 8080}]}}),
    );
    let out = s.kubectl(&["rollout", "status", "deployment/httpd", "--timeout=180s"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let pods = s.kubectl(&["get", "pods", "-l", "app=httpd", "-o", "json"]);
    let pods: Value = serde_json::from_slice(&pods.stdout).unwrap();
    let pod = &pods["items"][0];
    let name = pod["metadata"]["name"].as_str().unwrap().to_string();
    let status = &pod["status"]["containerStatuses"][0];
    assert!(
        status["containerID"]
            .as_str()
            .unwrap()
            .starts_with("oci://"),
        "{status}"
    );
    assert!(status["imageID"].as_str().unwrap().starts_with("sha256:"));

    // through the Service's cluster IP, as another client on the node would
    let (_, svc) = s
        .call(
            reqwest::Method::GET,
            "/api/v1/namespaces/default/services/httpd",
            None,
        )
        .await;
    let ip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
    let body = get_ok(30, "the Service answers", format!("http://{ip}:80/")).await;
    assert_eq!(body, "hello from busybox httpd\n");

    // logs in the CRI format, read back by kubectl
    let log = logs(&s, &[&name]);
    assert!(log.contains("serving as 33 from yes"), "{log}");

    // exec: output, stdin, the exit code, the image's user and environment
    let out = s.kubectl(&[
        "exec",
        &name,
        "--",
        "sh",
        "-c",
        "id -u; hostname; echo $FROM_IMAGE; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("33\n{name}\nyes\n"));
    let out = crate::util::kubectl_stdin(
        &s.kubeconfig(),
        &["exec", "-i", &name, "--", "cat"],
        Some("through stdin\n"),
    );
    assert_eq!(stdout(&out), "through stdin\n", "{}", stderr(&out));

    // `kubectl exec -it` gives a working shell on a terminal (run under
    // script(1), which gives kubectl the terminal a user would have)
    let mut sh = std::process::Command::new("script")
        .args([
            "-qec",
            &format!("kubectl exec -it {name} -- sh"),
            "/dev/null",
        ])
        .env("KUBECONFIG", s.kubeconfig())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("script (bsdutils)");
    let mut input = sh.stdin.take().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    input.write_all(b"echo $((6*7)); tty\n").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    input.write_all(b"exit\n").unwrap();
    drop(input);
    let out = sh.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("42"), "{text}");
    assert!(
        text.contains("/dev/pts/"),
        "the shell has a terminal: {text}"
    );
    assert!(
        text.contains("$ ") || text.contains("# "),
        "an interactive prompt: {text}"
    );

    // the terminal has the size of the user's (kubectl sends it as a resize)
    let out = std::process::Command::new("script")
        .args([
            "-qec",
            &format!("stty cols 123 rows 45; kubectl exec -it {name} -- stty size"),
            "/dev/null",
        ])
        .env("KUBECONFIG", s.kubeconfig())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script (bsdutils)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("45 123"), "{text}");

    // the official Python client on a terminal: it sends what it is given
    // as str in text frames (the size, stdin), and its size comes after
    // it has connected, which the command must not start before
    let script = format!(
        r#"
import json, time
from kubernetes import client, config
from kubernetes.stream import stream
config.load_kube_config(config_file={kc:?})
ws = stream(client.CoreV1Api().connect_get_namespaced_pod_exec, {name:?}, "default",
    command=["sh", "-c", "stty size; read x; echo got $x"],
    stdin=True, stdout=True, stderr=True, tty=True, _preload_content=False)
time.sleep(0.2)
ws.write_channel(4, json.dumps({{"Width": 123, "Height": 45}}))
ws.write_stdin("hello\n")
ws.run_forever(timeout=30)
code = ws.returncode
print(json.dumps([ws.read_all(), code]))
"#,
        kc = s.kubeconfig().to_str().unwrap(),
    );
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .expect("python3");
    let (text, code): (String, Option<i64>) = serde_json::from_str(stdout(&out).trim())
        .unwrap_or_else(|e| panic!("{e}: {} {}", stdout(&out), stderr(&out)));
    assert!(text.contains("45 123"), "{text:?}");
    assert!(text.contains("got hello"), "{text:?}");
    assert_eq!(code, Some(0), "{text:?}");

    // deleting the Deployment stops the containers (httpd ends on SIGTERM)
    let out = s.kubectl(&["delete", "deployment", "httpd", "--wait=true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    eventually(60, "the pods are gone", || async {
        let out = s.kubectl(&["get", "pods", "-l", "app=httpd", "-o", "name"]);
        stdout(&out).trim().is_empty().then_some(())
    })
    .await;
    assert_eq!(runc_containers(&s), "", "no container is left behind");
}

#[tokio::test]
async fn a_mixed_pod_shares_localhost_and_volumes_between_wasm_and_oci() {
    let reg = Registry::start(None).await;
    let image = push_busybox(&reg, "tools/busybox:1").await;
    let s = server().await;
    let web = example_image("wasm32-wasip2", "webserver");
    apply(
        &s,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "mixed"},
            "spec": {
                "volumes": [{"name": "shared", "emptyDir": {}}],
                "initContainers": [{"name": "prepare", "image": image,
                    "command": ["sh", "-c", "echo prepared by an OCI init container > /shared/from-init"],
                    "volumeMounts": [{"name": "shared", "mountPath": "/shared"}]}],
                "containers": [
                    {"name": "app", "image": web, "env": [{"name": "POD_NAME", "value": "mixed"}],
                     "ports": [{"containerPort": 8080}],
                     "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 1}},
                    {"name": "sidecar", "image": image,
                     "command": ["sh", "-c", "cat /shared/from-init; while true; do wget -qO /shared/page http://localhost:8080/from-sidecar && cat /shared/page; sleep 1; done"],
                     "volumeMounts": [{"name": "shared", "mountPath": "/shared"}]}]}}),
    );
    let pod = running(&s, "mixed").await;
    let ip = pod["status"]["podIP"].as_str().unwrap().to_string();

    // the OCI sidecar reaches the Wasm app over the pod's localhost, and
    // reads what the OCI init container left in the shared emptyDir
    let log = eventually(60, "the sidecar fetched a page", || async {
        let l = logs(&s, &["mixed", "-c", "sidecar"]);
        l.contains("/from-sidecar").then_some(l)
    })
    .await;
    assert!(log.contains("prepared by an OCI init container"), "{log}");
    assert!(log.contains("hello from mixed at /from-sidecar"), "{log}");

    // the Wasm app runs inside the pod's network namespace: the node reaches
    // it only through the pod's address
    let body = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{ip}:8080/from-node"))
        .send()
        .await
        .expect("the pod's address answers")
        .text()
        .await
        .unwrap();
    assert_eq!(body, "hello from mixed at /from-node\n");

    // a file the Wasm app cannot write is seen by the OCI sidecar: the
    // emptyDir is one directory for the whole pod
    let out = s.kubectl(&[
        "exec",
        "mixed",
        "-c",
        "sidecar",
        "--",
        "cat",
        "/shared/page",
    ]);
    assert_eq!(
        stdout(&out),
        "hello from mixed at /from-sidecar\n",
        "{}",
        stderr(&out)
    );

    // an OCI init container prepares a file for a Wasm container
    let reader = example_image("wasm32-wasip1", "config-reader");
    apply(
        &s,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "prepared"},
            "spec": {"restartPolicy": "Never",
                "volumes": [{"name": "config", "emptyDir": {}}],
                "initContainers": [{"name": "write", "image": image,
                    "command": ["sh", "-c", "echo from-busybox > /config/msg"],
                    "volumeMounts": [{"name": "config", "mountPath": "/config"}]}],
                "containers": [{"name": "read", "image": reader,
                    "volumeMounts": [{"name": "config", "mountPath": "/config"}]}]}}),
    );
    s.wait_pod("prepared", "prepared succeeds", |p| {
        p["status"]["phase"] == "Succeeded"
    })
    .await;
    let log = logs(&s, &["prepared"]);
    assert!(log.contains("file /config/msg=from-busybox"), "{log}");
}

#[tokio::test]
async fn sandboxed_pods_reach_services_pods_and_cluster_dns_and_the_ingress_reaches_them() {
    let reg = Registry::start(None).await;
    let image = push_busybox(&reg, "tools/busybox:1").await;
    let http_port = crate::util::free_port();
    let s = Server::builder()
        .arg("--backoff-base-ms")
        .arg("200")
        .arg("--ingress-listen")
        .arg(&format!("127.0.0.1:{http_port}"))
        .start()
        .await;
    let web = example_image("wasm32-wasip2", "webserver");
    let logs = tempfile::tempdir().unwrap();
    // a Wasm server and a sandboxed busybox httpd, each behind a Service
    for (name, container) in [
        // (bound to its pod address: a Wasm guest on the unspecified address
        // would hold the port on every address of the node; its preStop
        // hook asks it for a page, which its access log keeps)
        (
            "web",
            json!({"name": "web", "image": web, "env": [{"name": "POD_NAME", "value": "web"},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "ACCESS_LOG", "value": "/logs/access.log"}],
            "ports": [{"containerPort": 8080}],
            "volumeMounts": [{"name": "logs", "mountPath": "/logs"}],
            "lifecycle": {"preStop": {"httpGet": {"path": "/pre-stop", "port": 8080}}},
            "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 1}}),
        ),
        // (an exec readiness probe runs in the Linux container)
        (
            "httpd",
            json!({"name": "httpd", "image": image,
            "command": ["httpd", "-f", "-p", "8080", "-h", "/var/www"],
            "ports": [{"containerPort": 8080}],
            "volumeMounts": [{"name": "logs", "mountPath": "/logs"}],
            "readinessProbe": {"exec": {"command": ["cat", "/var/www/index.html"]}, "periodSeconds": 1},
            "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}),
        ),
    ] {
        apply(
            &s,
            &json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "labels": {"app": name}},
                "spec": {"terminationGracePeriodSeconds": 1, "containers": [container],
                    "volumes": [{"name": "logs", "hostPath": {"path": logs.path().join(name)}}]}}),
        );
        apply(
            &s,
            &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
                "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]}}),
        );
    }
    apply(
        &s,
        &json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "httpd"},
            "spec": {"rules": [{"host": "busybox.test", "http": {"paths": [{"path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "httpd", "port": {"number": 80}}}}]}}]}}),
    );
    // a sandboxed client in another namespace
    let out = s.kubectl(&["create", "namespace", "shop"]);
    assert!(out.status.success(), "{}", stderr(&out));
    apply(
        &s,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client", "namespace": "shop"},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "client", "image": image,
                "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]}]}}),
    );
    let web_pod = running(&s, "web").await;
    running(&s, "httpd").await;
    let out = s.kubectl(&[
        "wait",
        "-n",
        "shop",
        "pod/client",
        "--for=condition=Ready",
        "--timeout=120s",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let web_ip = web_pod["status"]["podIP"].as_str().unwrap().to_string();
    let (_, dns) = s
        .call(
            reqwest::Method::GET,
            "/api/v1/namespaces/kube-system/services/kube-dns",
            None,
        )
        .await;
    let dns_ip = dns["spec"]["clusterIP"].as_str().unwrap().to_string();
    let (_, svc) = s
        .call(
            reqwest::Method::GET,
            "/api/v1/namespaces/default/services/web",
            None,
        )
        .await;
    let web_svc_ip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
    let exec =
        |script: &str| s.kubectl(&["exec", "-n", "shop", "client", "--", "sh", "-c", script]);

    // the node offers both runtimes to the scheduler
    let out = s.kubectl(&[
        "get",
        "nodes",
        "-o",
        "jsonpath={.items[0].metadata.annotations.node\\.wasmkube\\.io/runtimes}",
    ]);
    assert_eq!(stdout(&out), "wasm,oci", "{}", stderr(&out));

    // the kubelet's resolv.conf for ClusterFirst, with the pod's search path
    let out = exec("cat /etc/resolv.conf");
    let resolv = stdout(&out);
    assert!(
        resolv.contains(&format!("nameserver {dns_ip}\n")),
        "{resolv}"
    );
    assert!(
        resolv.contains("search shop.svc.cluster.local svc.cluster.local cluster.local"),
        "{resolv}"
    );
    assert!(resolv.contains("options ndots:5"), "{resolv}");

    // the cluster DNS answers from inside the sandbox, full and short names
    let found = eventually(60, "nslookup web.default", || async {
        let out = exec("nslookup web.default.svc.cluster.local");
        let text = stdout(&out);
        text.contains(&web_svc_ip).then_some(text)
    })
    .await;
    assert!(found.contains(&web_svc_ip), "{found}");
    let out = exec("nslookup no-such-service.default.svc.cluster.local");
    assert!(
        !out.status.success() || stdout(&out).contains("NXDOMAIN"),
        "{}",
        stdout(&out)
    );

    // a Wasm pod behind a Service, by name through the search path
    let body = eventually(60, "the web Service by name", || async {
        let out = exec("wget -qO- http://web.default/by-name");
        out.status.success().then(|| stdout(&out))
    })
    .await;
    assert_eq!(body, "hello from web at /by-name\n");
    // the Wasm pod by its address
    let out = exec(&format!("wget -qO- http://{web_ip}:8080/by-address"));
    assert_eq!(
        stdout(&out),
        "hello from web at /by-address\n",
        "{}",
        stderr(&out)
    );
    // another sandboxed pod through its Service's cluster IP
    let out = exec("wget -qO- http://httpd.default.svc.cluster.local/");
    assert_eq!(
        stdout(&out),
        "hello from busybox httpd\n",
        "{}",
        stderr(&out)
    );
    // nothing listens there: refused, not hung
    let out = exec(&format!("wget -T 5 -qO- http://{web_ip}:8999/"));
    assert!(!out.status.success());

    // a Wasm pod reaches the sandboxed httpd through its Service's name
    let out = s.kubectl(&[
        "exec",
        "web",
        "--",
        "webserver",
        "get",
        "httpd.default.svc.cluster.local:80",
        "/",
    ]);
    assert_eq!(
        stdout(&out),
        "hello from busybox httpd\n",
        "{}",
        stderr(&out)
    );

    // and the Ingress reaches the sandboxed httpd
    let body = eventually(60, "the Ingress routes to httpd", || async {
        let r = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
            .get(format!("http://127.0.0.1:{http_port}/"))
            .header("host", "busybox.test")
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(r.text().await.ok()?)
    })
    .await;
    assert_eq!(body, "hello from busybox httpd\n");

    // deleting the Wasm pod runs its preStop hook first
    let out = s.kubectl(&["delete", "pod", "web", "--wait=true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let access = std::fs::read_to_string(logs.path().join("web/access.log")).unwrap_or_default();
    assert!(access.contains("GET /pre-stop HTTP/1.1"), "{access}");
}

#[tokio::test]
async fn memory_limits_oom_kill_and_failing_containers_back_off() {
    let reg = Registry::start(None).await;
    let image = push_busybox(&reg, "tools/busybox:1").await;
    let s = server().await;
    apply(
        &s,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hog"},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "hog", "image": image,
                // tail keeps a line without a newline in memory: all of it
                "command": ["sh", "-c", "head -c 200000000 /dev/zero | tail"],
                "resources": {"limits": {"memory": "32Mi"}}}]}}),
    );
    let p = s
        .wait_pod("hog", "hog is killed", |p| p["status"]["phase"] == "Failed")
        .await;
    let t = &p["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(t["reason"], "OOMKilled", "{p}");
    assert_eq!(t["exitCode"], 137, "{p}");
    // a memory limit alone makes the pod Burstable, kept through status updates
    let out = s.kubectl(&["get", "pod", "hog", "-o", "jsonpath={.status.qosClass}"]);
    assert_eq!(stdout(&out), "Burstable", "{}", stderr(&out));

    apply(
        &s,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "crash"},
            "spec": {"containers": [{"name": "crash", "image": image,
                "command": ["sh", "-c", "echo boom; exit 2"]}]}}),
    );
    let p = s
        .wait_pod("crash", "crash restarts twice", |p| {
            p["status"]["containerStatuses"][0]["restartCount"]
                .as_u64()
                .unwrap_or(0)
                >= 2
        })
        .await;
    assert_eq!(p["status"]["qosClass"], "BestEffort", "{p}");
    let last = &p["status"]["containerStatuses"][0]["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 2, "{p}");
    assert_eq!(last["reason"], "Error", "{p}");
    s.wait_pod("crash", "crash backs off", |p| {
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    })
    .await;
    let log = logs(&s, &["crash", "--previous"]);
    assert_eq!(log, "boom\n");
}

#[tokio::test]
async fn oci_containers_keep_running_through_an_agent_kill_9() {
    let reg = Registry::start(None).await;
    let image = push_busybox(&reg, "tools/busybox:1").await;
    let mut s = server().await;
    apply(
        &s,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "steady"},
            "spec": {"terminationGracePeriodSeconds": 5, "containers": [{"name": "main", "image": image,
                "command": ["sh", "-c", "trap 'echo bye; exit 0' TERM; cat /proc/sys/kernel/random/uuid > /tmp/started; i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.3; done"]}]}}),
    );
    running(&s, "steady").await;
    let started = eventually(30, "the start time is written", || async {
        let out = s.kubectl(&["exec", "steady", "--", "cat", "/tmp/started"]);
        out.status.success().then(|| stdout(&out))
    })
    .await;

    // the server and its embedded agent die without a chance to clean up;
    // the container's shim goes on writing its log meanwhile
    let uid = p_uid(&s, "steady").await;
    let log_file = s.dir.join(format!("agent/pods/{uid}/logs/main/0.log"));
    s.kill9();
    let before = std::fs::metadata(&log_file).expect("the log file").len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = std::fs::metadata(&log_file).unwrap().len();
    assert!(
        after > before,
        "the log grew while no agent ran: {before} -> {after}"
    );
    s.restart().await;
    let p = running(&s, "steady").await;
    assert_eq!(
        p["status"]["containerStatuses"][0]["restartCount"], 0,
        "{p}"
    );
    let out = s.kubectl(&["exec", "steady", "--", "cat", "/tmp/started"]);
    assert_eq!(
        stdout(&out),
        started,
        "the same container, never restarted: {}",
        stderr(&out)
    );
    // its log went on while the agent was away, and goes on now
    let before = logs(&s, &["steady"]).lines().count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = logs(&s, &["steady"]);
    assert!(log.lines().count() > before, "{log}");
    let ticks: Vec<u64> = log
        .lines()
        .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
        .collect();
    assert!(
        ticks.windows(2).all(|w| w[1] == w[0] + 1),
        "no line lost or doubled: {ticks:?}"
    );

    // the adopted container still stops on deletion, with its exit learnt
    let out = s.kubectl(&["delete", "pod", "steady", "--wait=true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(runc_containers(&s), "");
}

async fn p_uid(s: &Server, name: &str) -> String {
    let (_, p) = s
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/namespaces/default/pods/{name}"),
            None,
        )
        .await;
    p["metadata"]["uid"].as_str().unwrap().to_string()
}

/// A `docker save` style archive of the busybox image, tagged `tag`.
fn docker_archive(path: &Path, tag: &str) {
    let layer = busybox_layer();
    let config = image_config(&layer, wasmkube_runtime::oci::images::host_arch());
    let manifest =
        json!([{"Config": "config.json", "RepoTags": [tag], "Layers": ["layer/layer.tar"]}]);
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data).unwrap();
    };
    add("manifest.json", manifest.to_string().as_bytes());
    add("config.json", &config);
    add("layer/layer.tar", &layer);
    b.finish().unwrap();
}

#[tokio::test]
async fn images_import_from_a_tarball_with_no_registry() {
    let s = server().await;
    let dir = tempfile::tempdir().unwrap();
    // a registry name that resolves nowhere: nothing may be pulled
    let out = import_busybox(&s, "offline.invalid/tools/busybox:1");
    let data_dir = s.dir.join("agent");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "imported offline.invalid/tools/busybox:1\n");
    let out = wk(&["image", "list", "--data-dir", data_dir.to_str().unwrap()]);
    assert!(
        stdout(&out).contains("offline.invalid/tools/busybox:1"),
        "{}",
        stdout(&out)
    );

    apply(
        &s,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "offline"},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "main",
                "image": "offline.invalid/tools/busybox:1",
                "command": ["sh", "-c", "echo imported and running"]}]}}),
    );
    s.wait_pod("offline", "offline succeeds", |p| {
        p["status"]["phase"] == "Succeeded"
    })
    .await;
    assert_eq!(logs(&s, &["offline"]), "imported and running\n");

    // a corrupt archive is refused with the reason, and nothing changes
    let bad = dir.path().join("bad.tar");
    std::fs::write(&bad, b"not a tarball at all").unwrap();
    let out = wk(&[
        "image",
        "import",
        bad.to_str().unwrap(),
        "--data-dir",
        data_dir.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("bad.tar"), "{}", stderr(&out));
}

#[tokio::test]
async fn pod_security_admission_refuses_privileged_pods_in_restricted_namespaces() {
    let reg = Registry::start(None).await;
    let image = push_busybox(&reg, "tools/busybox:1").await;
    let audit_log = tempfile::tempdir().unwrap();
    let audit_path = audit_log.path().join("audit.log");
    let s = Server::builder()
        .arg("--audit-log-path")
        .arg(audit_path.to_str().unwrap())
        .start()
        .await;
    for (ns, level) in [("locked", "restricted"), ("shared", "baseline")] {
        let out = s.kubectl(&["create", "namespace", ns]);
        assert!(out.status.success(), "{}", stderr(&out));
        let out = s.kubectl(&[
            "label",
            "namespace",
            ns,
            &format!("pod-security.kubernetes.io/enforce={level}"),
            &format!("pod-security.kubernetes.io/warn={level}"),
            &format!("pod-security.kubernetes.io/audit={level}"),
            "pod-security.kubernetes.io/enforce-version=latest",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let pod = |ns: &str, name: &str, spec: Value| {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns}, "spec": spec})
    };
    let apply_out = |manifest: &Value| {
        crate::util::kubectl_stdin(
            &s.kubeconfig(),
            &["apply", "-f", "-"],
            Some(&manifest.to_string()),
        )
    };

    // a privileged pod is refused in the restricted namespace, in
    // kube-apiserver's words, and nothing of it is stored
    let privileged = pod(
        "locked",
        "priv",
        json!({"containers": [{"name": "c", "image": image, "command": ["sleep", "60"],
            "securityContext": {"privileged": true}}]}),
    );
    let out = apply_out(&privileged);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(
            "pods \"priv\" is forbidden: violates PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false"
        ),
        "{err}"
    );
    assert!(
        err.contains("privileged (container \"c\" must not set securityContext.privileged=true)"),
        "{err}"
    );
    let out = s.kubectl(&["get", "pod", "priv", "-n", "locked"]);
    assert!(!out.status.success(), "the refused pod is not stored");

    // so is a hostPath pod in the baseline namespace, while a plain one runs
    let host_path = pod(
        "shared",
        "host",
        json!({"containers": [{"name": "c", "image": image, "command": ["sleep", "60"]}],
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}]}),
    );
    let out = apply_out(&host_path);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(
            "violates PodSecurity \"baseline:latest\": hostPath volumes (volume \"root\")"
        ),
        "{}",
        stderr(&out)
    );

    // a pod that meets the restricted level is admitted and runs under
    // runc as that level asks: non-root, no capabilities, no escalation
    let compliant = pod(
        "locked",
        "tidy",
        json!({"securityContext": {"runAsNonRoot": true, "runAsUser": 1000,
                "seccompProfile": {"type": "RuntimeDefault"}},
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": image,
                "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"],
                "securityContext": {"allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]}}}]}),
    );
    let out = apply_out(&compliant);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("Warning"), "{}", stderr(&out));
    let out = s.kubectl(&[
        "wait",
        "-n",
        "locked",
        "pod/tidy",
        "--for=condition=Ready",
        "--timeout=120s",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = s.kubectl(&[
        "exec",
        "-n",
        "locked",
        "tidy",
        "--",
        "sh",
        "-c",
        "id -u; grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status",
    ]);
    let text = stdout(&out);
    assert!(text.starts_with("1000\n"), "{text}{}", stderr(&out));
    assert!(text.contains("CapEff:\t0000000000000000"), "{text}");
    assert!(text.contains("NoNewPrivs:\t1"), "{text}");
    assert!(text.contains("Seccomp:\t2"), "{text}");

    // a workload whose template would be refused: admitted with a warning
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "loose", "namespace": "locked"},
        "spec": {"selector": {"matchLabels": {"app": "loose"}},
            "template": {"metadata": {"labels": {"app": "loose"}},
                "spec": {"containers": [{"name": "c", "image": image}]}}}});
    let out = apply_out(&deployment);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Warning: would violate PodSecurity \"restricted:latest\""),
        "{}",
        stderr(&out)
    );

    // the same refusal through the official Python client: 403 Forbidden
    let script = format!(
        r#"
import json, sys
from kubernetes import client, config
config.load_kube_config(config_file={kc:?})
api = client.CoreV1Api()
body = json.loads({body:?})
body["metadata"]["name"] = "priv-py"
try:
    api.create_namespaced_pod("locked", body)
    print("created")
except client.exceptions.ApiException as e:
    print("refused", e.status, json.loads(e.body)["reason"])
"#,
        kc = s.kubeconfig().to_str().unwrap(),
        body = privileged.to_string(),
    );
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .expect("python3");
    assert_eq!(
        stdout(&out).trim(),
        "refused 403 Forbidden",
        "{}",
        stderr(&out)
    );

    // the audit log carries PodSecurity's finding on the request's event
    let found = eventually(30, "the audit event of the refused pod", || async {
        let log = std::fs::read_to_string(&audit_path).ok()?;
        log.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|e| {
                e["objectRef"]["name"] == "priv-py"
                    || (e["verb"] == "create"
                        && e["requestURI"]
                            .as_str()
                            .is_some_and(|u| u.starts_with("/api/v1/namespaces/locked/pods"))
                        && e["responseStatus"]["code"] == 403)
            })
    })
    .await;
    assert_eq!(found["responseStatus"]["code"], 403, "{found}");
    let v = found["annotations"]["pod-security.kubernetes.io/audit-violations"]
        .as_str()
        .unwrap_or_default();
    assert!(
        v.starts_with("would violate PodSecurity \"restricted:latest\": "),
        "{found}"
    );
}

#[tokio::test]
async fn a_stateful_set_keeps_its_claim_and_runs_hooks_and_a_native_sidecar() {
    let reg = Registry::start(None).await;
    let image = push_busybox(&reg, "tools/busybox:1").await;
    let s = server().await;
    let forever = "trap 'exit 0' TERM; while true; do sleep 1; done";
    let mount = json!([{"name": "data", "mountPath": "/data"}]);
    apply(
        &s,
        &json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
            "spec": {"replicas": 1, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                "template": {"metadata": {"labels": {"app": "db"}}, "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "initContainers": [{"name": "sidecar", "image": image, "restartPolicy": "Always",
                        "command": ["sh", "-c", format!("echo sidecar-started >> /data/events; {forever}")],
                        "volumeMounts": mount}],
                    "containers": [{"name": "db", "image": image,
                        "command": ["sh", "-c", format!(
                            "n=$(( $(cat /data/count 2>/dev/null || echo 0) + 1 )); echo $n > /data/count; \
                             echo main-started >> /data/events; {forever}")],
                        "lifecycle": {
                            "postStart": {"exec": {"command": ["sh", "-c", "echo post-start >> /data/events"]}},
                            "preStop": {"exec": {"command": ["sh", "-c", "echo pre-stop >> /data/events"]}}},
                        "volumeMounts": mount}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}}),
    );
    let first = running(&s, "db-0").await;
    let exec = |script: &str| s.kubectl(&["exec", "db-0", "-c", "db", "--", "sh", "-c", script]);
    let out = exec("cat /data/count");
    assert_eq!(stdout(&out), "1\n", "{}", stderr(&out));
    let events = eventually(30, "the postStart hook ran", || async {
        let e = stdout(&exec("cat /data/events"));
        e.contains("post-start").then_some(e)
    })
    .await;
    // the native sidecar starts before the main container
    let lines: Vec<&str> = events.lines().collect();
    assert_eq!(lines[0], "sidecar-started", "{events}");
    assert!(lines.contains(&"main-started"), "{events}");
    let statuses = first["status"]["initContainerStatuses"].clone();
    assert_eq!(statuses[0]["name"], "sidecar", "{statuses}");
    assert!(statuses[0]["state"]["running"].is_object(), "{statuses}");
    assert_eq!(statuses[0]["started"], true, "{statuses}");

    // the pod goes, its claim stays, and the new pod finds the data
    let out = s.kubectl(&["delete", "pod", "db-0", "--wait=true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let uid = first["metadata"]["uid"].clone();
    s.wait_pod("db-0", "db-0 again, ready", |p| {
        p["metadata"]["uid"] != uid
            && p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
    .await;
    let out = exec("cat /data/count");
    assert_eq!(stdout(&out), "2\n", "{}", stderr(&out));
    let events = stdout(&exec("cat /data/events"));
    assert!(
        events.contains("pre-stop"),
        "the preStop hook ran before the first pod stopped: {events}"
    );
    assert_eq!(events.matches("sidecar-started").count(), 2, "{events}");
    let out = s.kubectl(&["get", "pvc", "data-db-0", "-o", "jsonpath={.status.phase}"]);
    assert_eq!(stdout(&out), "Bound", "{}", stderr(&out));
}

/// Import busybox-static as `docker.io/library/busybox:1.36`, the name the
/// example manifests use, from a tarball (no registry is reachable).
fn import_example_busybox(s: &Server) {
    let out = import_busybox(s, "docker.io/library/busybox:1.36");
    assert!(out.status.success(), "{}", stderr(&out));
}

/// `wk image import` of a busybox docker-archive tagged `tag` into the
/// server's agent.
fn import_busybox(s: &Server, tag: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("busybox.tar");
    docker_archive(&archive, tag);
    let data_dir = s.dir.join("agent");
    wk(&[
        "image",
        "import",
        archive.to_str().unwrap(),
        "--data-dir",
        data_dir.to_str().unwrap(),
    ])
}

/// Apply `examples/manifests/NAME.yaml` with kubectl, as its header says.
fn apply_example(s: &Server, name: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join(format!("examples/manifests/{name}.yaml")))
        .unwrap()
        .replace(
            "/WASMKUBE_EXAMPLES",
            &root.join("examples/target").display().to_string(),
        );
    let out = crate::util::kubectl_stdin(&s.kubeconfig(), &["apply", "-f", "-"], Some(&text));
    assert!(
        out.status.success(),
        "kubectl apply {name}: {}",
        stderr(&out)
    );
}

#[tokio::test]
async fn the_mixed_pod_example_shares_localhost_and_a_volume() {
    let s = server().await;
    import_example_busybox(&s);
    apply_example(&s, "mixed-pod");
    let pod = running(&s, "mixed").await;
    // the Linux sidecar reaches the Wasm function over the pod's localhost
    let log = eventually(60, "the sidecar got an answer", || async {
        let l = logs(&s, &["mixed", "-c", "sidecar"]);
        l.contains("hello from mixed: GET /from-sidecar")
            .then_some(l)
    })
    .await;
    // (its first tries may come before the function listens)
    assert_eq!(
        log.lines().last(),
        Some("hello from mixed: GET /from-sidecar"),
        "{log}"
    );
    // kubectl attach follows the Linux container's output from now on
    let out = std::process::Command::new("timeout")
        .args(["4", "kubectl", "attach", "mixed", "-c", "sidecar"])
        .env("KUBECONFIG", s.kubeconfig())
        .output()
        .unwrap();
    let attached = stdout(&out);
    assert!(
        attached
            .matches("hello from mixed: GET /from-sidecar")
            .count()
            >= 2,
        "{attached}{}",
        stderr(&out)
    );
    // and the function serves, from the shared emptyDir, what the sidecar wrote
    let ip = pod["status"]["podIP"].as_str().unwrap();
    let body = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{ip}:8080/file?path=/shared/latest"))
        .send()
        .await
        .expect("the function answers on the pod's address")
        .text()
        .await
        .unwrap();
    assert_eq!(body, "hello from mixed: GET /from-sidecar\n");
}

#[tokio::test]
async fn the_oci_sidecar_example_ships_the_wasm_apps_log() {
    let s = server().await;
    import_example_busybox(&s);
    apply_example(&s, "oci-sidecar");
    let out = s.kubectl(&["rollout", "status", "deployment/shipped", "--timeout=120s"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let (_, svc) = s
        .call(
            reqwest::Method::GET,
            "/api/v1/namespaces/default/services/shipped",
            None,
        )
        .await;
    let ip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
    let body = get_ok(
        30,
        "the Service answers",
        format!("http://{ip}/shipped-line"),
    )
    .await;
    assert!(body.starts_with("hello from shipped-"), "{body}");
    // the request's log line, written by the Wasm app, shipped by busybox
    let shipped = eventually(30, "the shipper printed the line", || async {
        let l = stdout(&s.kubectl(&["logs", "deploy/shipped", "-c", "shipper"]));
        l.contains("GET /shipped-line HTTP/1.1").then_some(l)
    })
    .await;
    assert!(shipped.starts_with("shipped-"), "{shipped}");
    let pods = s.kubectl(&["get", "pods", "-l", "app=shipped", "-o", "json"]);
    let pods: Value = serde_json::from_slice(&pods.stdout).unwrap();
    let sidecar = &pods["items"][0]["status"]["initContainerStatuses"][0];
    assert_eq!(sidecar["name"], "shipper", "{sidecar}");
    assert!(sidecar["state"]["running"].is_object(), "{sidecar}");
}

#[tokio::test]
async fn unused_images_are_collected_past_the_disk_threshold() {
    let reg = Registry::start(None).await;
    let a = push_busybox(&reg, "tools/busybox:a").await;
    let b = push_busybox(&reg, "tools/busybox:b").await;
    // a threshold every disk is past: whatever no pod uses goes
    let s = Server::builder()
        .arg("--backoff-base-ms")
        .arg("200")
        .arg("--image-gc-high-threshold")
        .arg("1")
        .arg("--image-gc-low-threshold")
        .arg("0")
        .start()
        .await;
    let data_dir = s.dir.join("agent");
    let images = || {
        stdout(&wk(&[
            "image",
            "list",
            "--data-dir",
            data_dir.to_str().unwrap(),
        ]))
    };
    let layers = || {
        std::fs::read_dir(data_dir.join("oci/images/layers"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    apply(
        &s,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "keeps-b"},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "c", "image": b,
                "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]}]}}),
    );
    running(&s, "keeps-b").await;
    apply(
        &s,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "used-a"},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": a,
                "command": ["true"]}]}}),
    );
    s.wait_pod("used-a", "used-a succeeds", |p| {
        p["status"]["phase"] == "Succeeded"
    })
    .await;
    assert!(images().contains("tools/busybox:a"), "{}", images());
    let out = s.kubectl(&["delete", "pod", "used-a", "--wait=true"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // a's pod is gone: a is collected, b (in use) and the layer b holds stay
    eventually(30, "image a collected", || async {
        (!images().contains("tools/busybox:a")).then_some(())
    })
    .await;
    assert!(images().contains("tools/busybox:b"), "{}", images());
    assert_eq!(layers(), 1);
    let out = s.kubectl(&["exec", "keeps-b", "--", "echo", "still running"]);
    assert_eq!(stdout(&out), "still running\n", "{}", stderr(&out));

    // when nothing uses b either, its layer goes too
    let out = s.kubectl(&["delete", "pod", "keeps-b", "--wait=true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    eventually(30, "image b and its layer collected", || async {
        // only the header is left
        (images().lines().count() == 1 && layers() == 0).then_some(())
    })
    .await;

    // a collected image is pulled again when a pod needs it
    apply(
        &s,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "again"},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": a,
                "command": ["echo", "pulled again"]}]}}),
    );
    s.wait_pod("again", "again succeeds", |p| {
        p["status"]["phase"] == "Succeeded"
    })
    .await;
    assert_eq!(logs(&s, &["again"]), "pulled again\n");

    // thresholds are checked when the agent starts
    let out = wk(&[
        "server",
        "--data-dir",
        s.dir.join("elsewhere").to_str().unwrap(),
        "--image-gc-high-threshold",
        "50",
        "--image-gc-low-threshold",
        "60",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--image-gc-low-threshold 60 is above --image-gc-high-threshold 50"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn oci_pods_run_on_through_an_agent_restart_with_no_control_plane() {
    let reg = Registry::start(None).await;
    let image = push_busybox(&reg, "tools/busybox:1").await;
    let port = crate::util::free_port();
    let mut s = Server::builder()
        .arg("--disable-agent")
        .arg("--listen")
        .arg(&format!("127.0.0.1:{port}"))
        .start()
        .await;
    let mut agent = crate::util::AgentProc::start(&s, "edge-oci");
    s.node_name().await;
    let host = tempfile::tempdir().unwrap();
    apply(
        &s,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "forever"},
            "spec": {"nodeName": "edge-oci", "terminationGracePeriodSeconds": 1,
                "volumes": [{"name": "data", "hostPath": {"path": host.path()}}],
                "containers": [{"name": "c", "image": image,
                    "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do echo tick >> /data/ticks; sleep 0.1; done"],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}}),
    );
    let before = running(&s, "forever").await;
    let ticks = || {
        std::fs::read_to_string(host.path().join("ticks"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    let runc_root = agent.dir.path().join("data/oci/runc");
    let containers = || {
        let out = std::process::Command::new("runc")
            .arg("--root")
            .arg(&runc_root)
            .args(["list", "-q"])
            .output()
            .unwrap();
        stdout(&out).trim().to_string()
    };
    let id = containers();
    assert_eq!(id.lines().count(), 1, "{id}");

    // the control plane goes, the agent dies and comes back: the container
    // never stopped, and the agent takes it over with no API server
    s.kill9();
    agent.restart();
    let at_restart = ticks();
    eventually(30, "the container keeps working", || async {
        (ticks() > at_restart + 10).then_some(())
    })
    .await;
    assert_eq!(containers(), id, "the same container, not a new one");

    // the control plane returns: the same pod, not restarted
    s.restart().await;
    let after = s
        .wait_pod("forever", "forever reported again", |p| {
            p["status"]["containerStatuses"][0]["state"]["running"].is_object()
                && p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .await;
    assert_eq!(after["metadata"]["uid"], before["metadata"]["uid"]);
    assert_eq!(after["status"]["podIP"], before["status"]["podIP"]);
    assert_eq!(
        after["status"]["containerStatuses"][0]["restartCount"], 0,
        "{after}"
    );
    assert_eq!(
        after["status"]["containerStatuses"][0]["containerID"],
        before["status"]["containerStatuses"][0]["containerID"]
    );

    // and a deletion through the API stops it
    let out = s.kubectl(&["delete", "pod", "forever", "--wait=true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    eventually(30, "the container is gone", || async {
        containers().is_empty().then_some(())
    })
    .await;
    let stopped_at = ticks();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ticks(), stopped_at, "the container stopped with its pod");
}

#[tokio::test]
async fn kubectl_top_and_the_autoscaler_see_linux_containers() {
    let reg = Registry::start(None).await;
    let image = push_busybox(&reg, "tools/busybox:1").await;
    let s = Server::builder()
        .arg("--horizontal-pod-autoscaler-sync-period")
        .arg("1")
        .start()
        .await;
    // one busy loop asks for a tenth of a core and uses a whole one
    apply(
        &s,
        &json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "burn"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "burn"}},
                "template": {"metadata": {"labels": {"app": "burn"}}, "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "c", "image": image,
                        "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do :; done"],
                        "resources": {"requests": {"cpu": "100m", "memory": "16Mi"},
                                      "limits": {"cpu": "500m", "memory": "32Mi"}}}]}}}}),
    );
    let out = s.kubectl(&["rollout", "status", "deployment/burn", "--timeout=120s"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    // kubectl top reads metrics.k8s.io, which reads the container's cgroup
    let top = eventually(60, "kubectl top shows the busy container", || async {
        let out = s.kubectl(&["top", "pod", "-l", "app=burn", "--no-headers"]);
        let text = stdout(&out);
        let cpu: u64 = text
            .split_whitespace()
            .nth(1)?
            .strip_suffix('m')?
            .parse()
            .ok()?;
        // the CFS quota from the 500m limit holds it near half a core
        (cpu >= 200).then_some((cpu, text))
    })
    .await;
    assert!(top.0 <= 700, "the 500m limit holds: {}", top.1);
    // an autoscaler on CPU utilisation (of the 100m request) adds replicas
    apply(
        &s,
        &json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "burn"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "burn"},
                "minReplicas": 1, "maxReplicas": 3,
                "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": 80}}}]}}),
    );
    eventually(90, "the autoscaler scales burn out", || async {
        let out = s.kubectl(&[
            "get",
            "deployment",
            "burn",
            "-o",
            "jsonpath={.spec.replicas}",
        ]);
        (stdout(&out).trim().parse::<u32>().ok()? >= 2).then_some(())
    })
    .await;
    let out = s.kubectl(&["get", "hpa", "burn", "-o", "json"]);
    let hpa: Value = serde_json::from_slice(&out.stdout).unwrap();
    let current = hpa["status"]["currentMetrics"][0]["resource"]["current"]["averageUtilization"]
        .as_u64()
        .unwrap_or(0);
    assert!(current > 80, "{hpa}");
    let out = s.kubectl(&["delete", "hpa,deployment", "burn", "--wait=true"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[tokio::test]
async fn sandboxed_pods_get_their_volumes_the_host_network_and_pods_of_other_nodes() {
    let reg = Registry::start(None).await;
    let image = push_busybox(&reg, "tools/busybox:1").await;
    let s = server().await;
    let _b = crate::util::AgentProc::start(&s, "node-b");
    eventually(60, "node-b registers", || async {
        let out = s.kubectl(&["get", "node", "node-b"]);
        out.status.success().then_some(())
    })
    .await;
    let forever = "trap 'exit 0' TERM; while true; do sleep 1; done";

    // a Wasm pod on the other node
    let web = example_image("wasm32-wasip2", "webserver");
    apply(
        &s,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "far", "labels": {"app": "far"}},
            "spec": {"nodeName": "node-b", "containers": [{"name": "web", "image": web,
                "env": [{"name": "POD_NAME", "value": "far"},
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                "ports": [{"containerPort": 8080}]}]}}),
    );
    // a sandboxed pod here, with a ConfigMap, a Secret and its ServiceAccount token
    let local = s.node_name().await;
    apply(
        &s,
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"},
            "data": {"greeting": "hello from a ConfigMap"}}),
    );
    apply(
        &s,
        &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sec"},
            "stringData": {"password": "hunter2"}}),
    );
    apply(
        &s,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "near"},
            "spec": {"nodeName": local, "terminationGracePeriodSeconds": 1,
                "volumes": [{"name": "cfg", "configMap": {"name": "cfg"}}],
                "containers": [{"name": "c", "image": image, "command": ["sh", "-c", forever],
                    "env": [{"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "password"}}}],
                    "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg"}]}]}}),
    );
    let far = running(&s, "far").await;
    running(&s, "near").await;
    assert_eq!(far["spec"]["nodeName"], "node-b");
    let exec = |script: &str| stdout(&s.kubectl(&["exec", "near", "--", "sh", "-c", script]));
    assert_eq!(exec("cat /etc/cfg/greeting"), "hello from a ConfigMap");
    assert_eq!(exec("echo $PASSWORD"), "hunter2\n");
    assert_eq!(
        exec("cat /var/run/secrets/kubernetes.io/serviceaccount/namespace"),
        "default"
    );
    assert!(exec("head -c 3 /var/run/secrets/kubernetes.io/serviceaccount/token") == "eyJ");

    // the pod on the other node, by its address
    let far_ip = far["status"]["podIP"].as_str().unwrap();
    let body = eventually(30, "the pod on node-b answers", || async {
        let out = exec(&format!("wget -qO- http://{far_ip}:8080/from-near"));
        (!out.is_empty()).then_some(out)
    })
    .await;
    assert_eq!(body, "hello from far at /from-near\n");

    // hostNetwork: no sandbox; the node's localhost and resolv.conf
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut c, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = c.read(&mut buf).await;
            let _ = c
                .write_all(b"HTTP/1.0 200 OK\r\ncontent-length: 13\r\n\r\nnode loopback")
                .await;
        }
    });
    apply(
        &s,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "host"},
            "spec": {"nodeName": local, "hostNetwork": true, "restartPolicy": "Never",
                "containers": [{"name": "c", "image": image, "command": ["sh", "-c",
                    format!("wget -qO- http://127.0.0.1:{port}/; echo; cat /etc/resolv.conf")]}]}}),
    );
    s.wait_pod("host", "host succeeds", |p| {
        p["status"]["phase"] == "Succeeded"
    })
    .await;
    let log = logs(&s, &["host"]);
    assert!(log.starts_with("node loopback\n"), "{log}");
    assert!(
        !log.contains("svc.cluster.local"),
        "the node's resolv.conf: {log}"
    );
    // the same request from a sandboxed pod meets the pod's own localhost
    let out = s.kubectl(&[
        "exec",
        "near",
        "--",
        "wget",
        "-T",
        "3",
        "-qO-",
        &format!("http://127.0.0.1:{port}/"),
    ]);
    assert!(!out.status.success(), "{}", stdout(&out));
}

#[tokio::test]
async fn attach_feeds_stdin_and_kubectl_run_it_gives_a_terminal() {
    let reg = Registry::start(None).await;
    let image = push_busybox(&reg, "tools/busybox:1").await;
    let s = server().await;
    // a container reading its stdin: kubectl attach -i feeds it
    apply(
        &s,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "reader"},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "c", "image": image,
                "stdin": true,
                "command": ["sh", "-c", "while read line; do echo \"got $line\"; done; echo stdin ended"]}]}}),
    );
    running(&s, "reader").await;
    let mut attach = std::process::Command::new("kubectl")
        .args(["attach", "-i", "reader"])
        .env("KUBECONFIG", s.kubeconfig())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = attach.stdin.take().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    input.write_all(b"first\nsecond\n").unwrap();
    let log = eventually(30, "the container read its input", || async {
        let l = logs(&s, &["reader"]);
        l.contains("got second").then_some(l)
    })
    .await;
    assert_eq!(log, "got first\ngot second\n");
    drop(input);
    let _ = attach.kill();
    let out = attach.wait_with_output().unwrap();
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(
        seen.contains("got first\ngot second\n"),
        "attach shows the output: {seen}"
    );
    // stdin stays open for the next attach (no stdinOnce): no end of input
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!logs(&s, &["reader"]).contains("stdin ended"));

    // stdinOnce: the input ends with the first attach
    apply(
        &s,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "once"},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": image,
                "stdin": true, "stdinOnce": true,
                "command": ["sh", "-c", "while read line; do echo \"got $line\"; done; echo stdin ended"]}]}}),
    );
    running(&s, "once").await;
    let out =
        crate::util::kubectl_stdin(&s.kubeconfig(), &["attach", "-i", "once"], Some("only\n"));
    assert!(out.status.success(), "{}", stderr(&out));
    s.wait_pod("once", "once ends with its input", |p| {
        p["status"]["phase"] == "Succeeded"
    })
    .await;
    assert_eq!(logs(&s, &["once"]), "got only\nstdin ended\n");

    // kubectl run -it --rm: a pod with a terminal, a shell in it, then gone
    let out = std::process::Command::new("script")
        .args([
            "-qec",
            &format!(
                "kubectl run shell -it --rm --restart=Never --image={image} -- sh -c 'stty size; read x; echo answer $((x*7)); tty'"
            ),
            "/dev/null",
        ])
        .env("KUBECONFIG", s.kubeconfig())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            let mut i = c.stdin.take().unwrap();
            std::thread::sleep(Duration::from_secs(6));
            i.write_all(b"6\n")?;
            std::thread::sleep(Duration::from_secs(2));
            drop(i);
            c.wait_with_output()
        })
        .expect("script (bsdutils)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("answer 42"), "{text}");
    assert!(text.contains("/dev/pts/"), "a terminal: {text}");
    eventually(60, "kubectl run --rm deletes the pod", || async {
        (!s.kubectl(&["get", "pod", "shell"]).status.success()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn private_images_need_their_pull_secret() {
    let reg = Registry::start(Some(("wk", "s3cret"))).await;
    let image = push_busybox_with(
        &reg,
        "private/busybox:1",
        &RegistryAuth::Basic("wk".into(), "s3cret".into()),
    )
    .await;
    let s = server().await;
    let pod = |name: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": image,
                "command": ["echo", "pulled with a secret"]}]}})
    };
    // no credentials: the registry refuses, the pod waits in ImagePullBackOff
    apply(&s, &pod("without"));
    let p = s
        .wait_pod("without", "without backs off pulling", |p| {
            matches!(
                p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"].as_str(),
                Some("ErrImagePull" | "ImagePullBackOff")
            )
        })
        .await;
    let message = p["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!message.is_empty(), "{p}");
    // with a dockerconfigjson Secret named in imagePullSecrets, it runs
    let dockerconfig = json!({"auths": {format!("127.0.0.1:{}", reg.port): {"username": "wk", "password": "s3cret"}}});
    apply(
        &s,
        &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "regcred"},
            "type": "kubernetes.io/dockerconfigjson",
            "stringData": {".dockerconfigjson": dockerconfig.to_string()}}),
    );
    let mut with = pod("with");
    with["spec"]["imagePullSecrets"] = json!([{"name": "regcred"}]);
    apply(&s, &with);
    s.wait_pod("with", "with succeeds", |p| {
        p["status"]["phase"] == "Succeeded"
    })
    .await;
    assert_eq!(logs(&s, &["with"]), "pulled with a secret\n");
}

#[tokio::test]
async fn wasm_containers_have_native_sidecars_and_post_start_hooks() {
    let s = server().await;
    let web = example_image("wasm32-wasip2", "webserver");
    let env = |name: &str, port: &str| {
        json!([{"name": "POD_NAME", "value": name}, {"name": "PORT", "value": port},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}])
    };
    apply(
        &s,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "wasm-sidecar"},
            "spec": {
                "initContainers": [{"name": "side", "image": web, "restartPolicy": "Always",
                    "env": env("side", "9090"), "ports": [{"containerPort": 9090}]}],
                "containers": [{"name": "main", "image": web, "env": env("main", "8080"),
                    "ports": [{"containerPort": 8080}],
                    // an exec hook runs a fresh instance of the module
                    "lifecycle": {"postStart": {"exec": {"command": ["webserver", "check"]}}},
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 1}}]}}),
    );
    let p = running(&s, "wasm-sidecar").await;
    let side = &p["status"]["initContainerStatuses"][0];
    assert!(side["state"]["running"].is_object(), "{side}");
    let ip = p["status"]["podIP"].as_str().unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    for (port, who) in [(9090, "side"), (8080, "main")] {
        let body = http
            .get(format!("http://{ip}:{port}/x"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, format!("hello from {who} at /x\n"));
    }
    // a failing postStart hook kills the container, which is restarted
    apply(
        &s,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bad-hook"},
            "spec": {"containers": [{"name": "main", "image": web, "env": env("bad", "8080"),
                "lifecycle": {"postStart": {"exec": {"command": ["webserver", "fail"]}}}}]}}),
    );
    s.wait_pod("bad-hook", "bad-hook restarts", |p| {
        p["status"]["containerStatuses"][0]["restartCount"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    })
    .await;
    let out = s.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=bad-hook",
    ]);
    assert!(
        stdout(&out).contains("FailedPostStartHook"),
        "{}",
        stdout(&out)
    );
}

#[tokio::test]
async fn an_image_index_gives_this_nodes_platform() {
    let reg = Registry::start(None).await;
    let anon = RegistryAuth::Anonymous;
    let host = wasmkube_runtime::oci::images::host_arch();
    let native = push_busybox(&reg, "multi/busybox:native").await;
    let foreign = push_busybox_for(&reg, "multi/busybox:foreign", &anon, "s390x").await;
    let client = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    });
    let mut entries = Vec::new();
    // the foreign platform first: taking the first entry would be wrong
    for (image, arch) in [(&foreign, "s390x"), (&native, host)] {
        let (raw, digest) = client
            .pull_manifest_raw(
                &image.parse().unwrap(),
                &anon,
                &["application/vnd.oci.image.manifest.v1+json"],
            )
            .await
            .unwrap();
        entries.push(json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest, "size": raw.len(), "platform": {"architecture": arch, "os": "linux"}}));
    }
    let index: oci_client::manifest::OciImageIndex = serde_json::from_value(json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries}))
    .unwrap();
    let multi = format!("127.0.0.1:{}/multi/busybox:1", reg.port);
    client
        .push_manifest_list(&multi.parse().unwrap(), &anon, index)
        .await
        .unwrap();
    let s = server().await;
    let pod = |name: &str, image: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": image,
                "command": ["echo", "this node's platform"]}]}})
    };
    apply(&s, &pod("multi", &multi));
    s.wait_pod("multi", "multi succeeds", |p| {
        p["status"]["phase"] == "Succeeded"
    })
    .await;
    assert_eq!(logs(&s, &["multi"]), "this node's platform\n");
    // an image for another platform alone is refused, saying so
    apply(&s, &pod("foreign", &foreign));
    let p = s
        .wait_pod("foreign", "foreign is refused", |p| {
            p["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("s390x"))
        })
        .await;
    let message = p["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains(&format!("the image is for s390x, this node is {host}")),
        "{message}"
    );
}

#[tokio::test]
async fn sandboxed_pods_reach_node_ports_by_node_address() {
    let reg = Registry::start(None).await;
    let image = push_busybox(&reg, "tools/busybox:1").await;
    let s = server().await;
    // a node whose address is not the machine's 127.0.0.1 (which inside
    // a sandbox is the pod's own localhost)
    let _b = crate::util::AgentProc::start_with(
        &s,
        "node-b",
        &[
            "--advertise-address",
            "127.0.0.5",
            "--listen",
            "127.0.0.5:0",
        ],
    );
    eventually(60, "node-b registers", || async {
        let out = s.kubectl(&["get", "node", "node-b", "-o", "wide"]);
        (out.status.success() && stdout(&out).contains("127.0.0.5")).then_some(())
    })
    .await;
    let web = example_image("wasm32-wasip2", "webserver");
    apply(
        &s,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": web,
                "env": [{"name": "POD_NAME", "value": "web"},
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                "ports": [{"containerPort": 8080}]}]}}),
    );
    apply(
        &s,
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"type": "NodePort", "selector": {"app": "web"},
                "ports": [{"port": 80, "targetPort": 8080}]}}),
    );
    let forever = "trap 'exit 0' TERM; while true; do sleep 1; done";
    let local = s.node_name().await;
    for (name, node) in [("on-b", "node-b"), ("on-local", local.as_str())] {
        apply(
            &s,
            &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "c", "image": image, "command": ["sh", "-c", forever]}]}}),
        );
    }
    running(&s, "web").await;
    running(&s, "on-b").await;
    running(&s, "on-local").await;
    let out = s.kubectl(&[
        "get",
        "svc",
        "web",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ]);
    let node_port = stdout(&out);
    assert!(
        node_port.parse::<u16>().is_ok_and(|p| p >= 30000),
        "{node_port}"
    );
    let url = format!("http://127.0.0.5:{node_port}");
    // its own node's node port, from a sandbox on node-b; then node-b's
    // node port from a sandbox on the other node
    for (pod, path) in [("on-b", "own-node"), ("on-local", "other-node")] {
        let body = eventually(30, "the node port answers from the sandbox", || async {
            let out = s.kubectl(&["exec", pod, "--", "wget", "-qO-", &format!("{url}/{path}")]);
            out.status.success().then(|| stdout(&out))
        })
        .await;
        assert_eq!(body, format!("hello from web at /{path}\n"), "from {pod}");
    }
}
