//! The real `wkctl` binary against a real server.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use reqwest::Method;
use serde_json::{json, Value};

use crate::util::{configmap, stderr, stdout, Server, WKCTL};

const MANIFEST: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  labels:
    app: web
    stale: "yes"
data:
  level: "1"
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: hello
        image: file:///opt/hello.wasm
---
apiVersion: v1
kind: Widget
metadata:
  name: w
---
apiVersion: v1
kind: Pod
metadata: [unclosed
"#;

#[tokio::test]
async fn apply_reports_each_document_and_goes_on_past_bad_ones() {
    let s = Server::start().await;
    let out = s.wkctl_stdin(&["apply", "-f", "-"], Some(MANIFEST));
    assert_eq!(
        out.status.code(),
        Some(1),
        "bad documents make the exit code 1"
    );
    assert_eq!(
        stdout(&out),
        "configmap/settings created\ndeployment.apps/web created\n"
    );
    let err = stderr(&out);
    assert!(
        err.contains("STDIN (document 3, line 27)")
            && err.contains("no matches for kind \"Widget\""),
        "{err}"
    );
    assert!(
        err.contains("error parsing STDIN (document 4, line 34): column 11: unclosed bracket"),
        "{err}"
    );

    let good: String = MANIFEST
        .split("---\n")
        .take(2)
        .collect::<Vec<_>>()
        .join("---\n");
    let out = s.wkctl_stdin(&["apply", "-f", "-"], Some(&good));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "configmap/settings unchanged\ndeployment.apps/web unchanged\n"
    );

    // change a value and drop a label: configured, and the label is gone (three-way apply)
    let changed = good
        .replace("level: \"1\"", "level: \"2\"")
        .replace("    stale: \"yes\"\n", "");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.yaml"), &changed).unwrap();
    let out = s.wkctl(&["apply", "-f", dir.path().to_str().unwrap()]);
    assert_eq!(
        stdout(&out),
        "configmap/settings configured\ndeployment.apps/web unchanged\n",
        "{}",
        stderr(&out)
    );
    let (_, cm) = s
        .call(
            Method::GET,
            "/api/v1/namespaces/default/configmaps/settings",
            None,
        )
        .await;
    assert_eq!(cm["data"]["level"], "2");
    assert_eq!(cm["metadata"]["labels"], json!({"app": "web"}));
}

#[tokio::test]
async fn get_prints_tables_formats_and_kubectl_errors() {
    let s = Server::start().await;
    for (ns, name) in [("default", "a"), ("default", "b"), ("kube-system", "c")] {
        let mut cm = configmap(name, "1");
        cm["metadata"]["labels"] = json!({"name": name});
        s.call(
            Method::POST,
            &format!("/api/v1/namespaces/{ns}/configmaps"),
            Some(cm),
        )
        .await;
    }
    let out = s.wkctl(&["get", "cm"]);
    let text = stdout(&out);
    // every namespace also holds kube-root-ca.crt, as in Kubernetes
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("kube-root-ca.crt"))
        .collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("DATA") && lines[0].ends_with("AGE"),
        "{text}"
    );
    assert_eq!(lines.len(), 3);
    assert!(
        lines[1].starts_with("a ") && lines[1].contains(" 1 "),
        "{text}"
    );

    assert_eq!(
        stdout(&s.wkctl(&["get", "configmaps", "-o", "name"])),
        "configmap/a\nconfigmap/b\nconfigmap/kube-root-ca.crt\n"
    );
    assert_eq!(
        stdout(&s.wkctl(&["get", "cm", "-l", "name!=a", "-o", "name"])),
        "configmap/b\nconfigmap/kube-root-ca.crt\n"
    );
    let all = stdout(&s.wkctl(&["get", "cm", "-A"]));
    assert!(
        all.starts_with("NAMESPACE")
            && all.contains("kube-system")
            && all
                .lines()
                .filter(|l| !l.contains("kube-root-ca.crt"))
                .count()
                == 4,
        "{all}"
    );
    let json: Value =
        serde_json::from_str(&stdout(&s.wkctl(&["get", "cm", "a", "-o", "json"]))).unwrap();
    assert_eq!(json["kind"], "ConfigMap");
    assert_eq!(json["metadata"]["name"], "a");
    let list: Value =
        serde_json::from_str(&stdout(&s.wkctl(&["get", "cm", "-o", "json"]))).unwrap();
    assert_eq!(list["kind"], "List");
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        3,
        "a, b, kube-root-ca.crt"
    );
    let yaml = stdout(&s.wkctl(&["-n", "kube-system", "get", "configmap/c", "-o", "yaml"]));
    assert!(
        yaml.contains("kind: ConfigMap") && yaml.contains("name: c"),
        "{yaml}"
    );

    let out = s.wkctl(&["get", "po", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "Error from server (NotFound): pods \"nope\" not found\n"
    );
    let out = s.wkctl(&["get", "widgets"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("the server doesn't have a resource type \"widgets\""));
    let out = s.wkctl(&["get", "pods"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stderr(&out), "No resources found in default namespace.\n");

    let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}}}});
    s.call(
        Method::POST,
        "/apis/apps/v1/namespaces/default/deployments",
        Some(deploy),
    )
    .await;
    let all = stdout(&s.wkctl(&["get", "all"]));
    assert!(
        all.contains("deployment.apps/web") && all.contains("0/3"),
        "{all}"
    );
    let wide = stdout(&s.wkctl(&["get", "deploy", "-o", "wide"]));
    assert!(
        wide.contains("SELECTOR") && wide.contains("a=b") && wide.contains("i:1"),
        "{wide}"
    );
}

#[tokio::test]
async fn describe_shows_the_object_and_its_aggregated_events() {
    let s = Server::start().await;
    let (_, cm) = s
        .call(
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            Some(configmap("d", "1")),
        )
        .await;
    let rec = wasmkube::client::events::Recorder::new(s.client(), "tester");
    rec.record(&cm, "Warning", "BackOff", "Back-off restarting")
        .await
        .unwrap();
    rec.record(&cm, "Warning", "BackOff", "Back-off restarting")
        .await
        .unwrap();
    let out = s.wkctl(&["describe", "cm", "d"]);
    let text = stdout(&out);
    assert!(
        text.starts_with("Name:         d\nNamespace:    default\n"),
        "{text}"
    );
    assert!(text.contains("Events:"), "{text}");
    let event_line = text
        .lines()
        .find(|l| l.contains("BackOff"))
        .expect("event row");
    assert!(
        event_line.contains("Warning")
            && event_line.contains("(x2 over")
            && event_line.contains("tester")
            && event_line.contains("Back-off restarting"),
        "{event_line}"
    );
    let out = s.wkctl(&["describe", "cm", "missing"]);
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test]
async fn delete_by_name_selector_file_and_namespace() {
    let s = Server::start().await;
    for n in ["x", "y", "z"] {
        let mut cm = configmap(n, "1");
        cm["metadata"]["labels"] = json!({"group": if n == "x" { "one" } else { "two" }});
        s.call(
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            Some(cm),
        )
        .await;
    }
    assert_eq!(
        stdout(&s.wkctl(&["delete", "cm", "x"])),
        "configmap \"x\" deleted\n"
    );
    assert_eq!(
        stdout(&s.wkctl(&["delete", "cm", "-l", "group=two"])),
        "configmap \"y\" deleted\nconfigmap \"z\" deleted\n"
    );
    let out = s.wkctl(&["delete", "cm", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "Error from server (NotFound): configmaps \"x\" not found\n"
    );
    assert_eq!(
        s.wkctl(&["delete", "cm", "x", "--ignore-not-found"])
            .status
            .code(),
        Some(0)
    );

    let out = s.wkctl(&["create", "namespace", "scratch"]);
    assert_eq!(stdout(&out), "namespace/scratch created\n");
    let manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: f\n  namespace: scratch\n";
    assert_eq!(
        stdout(&s.wkctl_stdin(&["apply", "-f", "-"], Some(manifest))),
        "configmap/f created\n"
    );
    assert_eq!(
        stdout(&s.wkctl_stdin(&["delete", "-f", "-"], Some(manifest))),
        "configmap \"f\" deleted\n"
    );
    s.wkctl_stdin(&["apply", "-f", "-"], Some(manifest));
    let out = s.wkctl(&["delete", "ns", "scratch"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "namespace \"scratch\" deleted\n");
    // wkctl waited for the namespace (and its content) to be gone
    assert_eq!(
        s.call(Method::GET, "/api/v1/namespaces/scratch", None)
            .await
            .0,
        404
    );
    assert_eq!(
        s.call(Method::GET, "/api/v1/namespaces/scratch/configmaps/f", None)
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn cluster_info_version_and_api_resources() {
    let s = Server::start().await;
    let out = stdout(&s.wkctl(&["cluster-info"]));
    assert_eq!(
        out,
        format!("Kubernetes control plane is running at {}\n", s.url)
    );
    let v = stdout(&s.wkctl(&["version"]));
    assert!(
        v.contains("Client Version: v1.33.0") && v.contains("Server Version: v1.33.0"),
        "{v}"
    );
    let r = stdout(&s.wkctl(&["api-resources"]));
    let deploy = r.lines().find(|l| l.starts_with("deployments")).unwrap();
    assert!(
        deploy.contains("deploy")
            && deploy.contains("apps/v1")
            && deploy.contains("true")
            && deploy.ends_with("Deployment"),
        "{deploy}"
    );
    // every served kind, plus NodeMetrics and PodMetrics (metrics.k8s.io)
    assert_eq!(r.lines().count(), 1 + wasmkube::api::RESOURCES.len() + 2);
    assert!(
        r.lines()
            .any(|l| l.starts_with("pods") && l.contains("metrics.k8s.io/v1beta1")),
        "{r}"
    );
    // an unreachable server is an error, not a hang
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kc.yaml");
    wasmkube::client::Kubeconfig {
        server: "https://127.0.0.1:1".into(),
        token: Some("t".into()),
        insecure: true,
        ..Default::default()
    }
    .write(&kc)
    .unwrap();
    let out = Command::new(WKCTL)
        .args(["--kubeconfig", kc.to_str().unwrap(), "get", "pods"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("127.0.0.1:1"), "{}", stderr(&out));
}

#[tokio::test]
async fn get_watch_prints_rows_as_objects_change() {
    let s = Server::start().await;
    s.call(
        Method::POST,
        "/api/v1/namespaces/default/configmaps",
        Some(configmap("first", "1")),
    )
    .await;
    let mut child = Command::new(WKCTL)
        .args(["get", "cm", "-w"])
        .env("KUBECONFIG", s.kubeconfig())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .filter(|l| !l.as_ref().is_ok_and(|l| l.starts_with("kube-root-ca.crt")));
    assert!(lines.next().unwrap().unwrap().starts_with("NAME"));
    assert!(lines.next().unwrap().unwrap().starts_with("first"));
    s.call(
        Method::POST,
        "/api/v1/namespaces/default/configmaps",
        Some(configmap("second", "1")),
    )
    .await;
    let reader = std::thread::spawn(move || lines.next().unwrap().unwrap());
    let line = reader.join().unwrap();
    assert!(line.starts_with("second"), "{line}");
    child.kill().unwrap();
    child.wait().unwrap();
}
