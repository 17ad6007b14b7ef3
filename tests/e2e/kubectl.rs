//! The real kubectl (the binary installed on these machines), with the
//! kubeconfig exactly as the server wrote it and no extra flags, against a
//! real server and its embedded agent: server-side printing, generators
//! (protobuf bodies), client-side and server-side apply, strategic merge
//! patches, OpenAPI (v3, and v2 in protobuf for `kind: List` files), rollouts of every workload kind, drain with a
//! disruption budget, port-forward, and the everyday read verbs.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::util::{eventually, example_image, kubectl_stdin, stderr, stdout, Server};

/// kubectl's stdout, asserting it succeeded.
fn ok(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "kubectl failed: {}\n{}",
        stderr(o),
        stdout(o)
    );
    stdout(o)
}

fn json_of(s: &Server, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&ok(&s.kubectl(&a))).expect("kubectl printed JSON")
}

fn header(out: &str) -> Vec<String> {
    let first = out.lines().next().unwrap_or("");
    // columns are separated by two or more spaces; names may hold one
    first
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}

fn image() -> String {
    example_image("wasm32-wasip1", "graceful")
}

/// The same guest under another `file://` path, so a template can change
/// to an image that also runs.
fn other_image(s: &Server, name: &str) -> String {
    let from = image();
    let to = s.dir.join(format!("{name}.wasm"));
    std::fs::copy(from.trim_start_matches("file://"), &to).unwrap();
    format!("file://{}", to.display())
}

/// `kubectl create deployment web` with two replicas of the Ready guest,
/// rolled out.
fn web_deployment(s: &Server) {
    ok(&s.kubectl(&[
        "create",
        "deployment",
        "web",
        &format!("--image={}", image()),
        "--replicas=2",
    ]));
    ok(&s.kubectl(&["rollout", "status", "deploy/web", "--timeout=90s"]));
}

fn containers(d: &Value) -> Vec<(String, String)> {
    d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["image"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn get_prints_kube_apiserver_columns() {
    let s = Server::start().await;
    let node = s.node_name().await;
    web_deployment(&s);

    let pods = ok(&s.kubectl(&["get", "pods"]));
    assert_eq!(
        header(&pods),
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        "{pods}"
    );
    assert!(
        pods.lines()
            .skip(1)
            .all(|l| l.contains("1/1") && l.contains("Running")),
        "{pods}"
    );
    let wide = ok(&s.kubectl(&["get", "pods", "-o", "wide"]));
    assert_eq!(
        header(&wide),
        [
            "NAME",
            "READY",
            "STATUS",
            "RESTARTS",
            "AGE",
            "IP",
            "NODE",
            "NOMINATED NODE",
            "READINESS GATES"
        ],
        "{wide}"
    );
    assert!(wide.contains(&node), "{wide}");
    let nodes = ok(&s.kubectl(&["get", "nodes"]));
    assert_eq!(
        header(&nodes),
        ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    );
    assert!(nodes.contains("Ready"), "{nodes}");
    let deploy = ok(&s.kubectl(&["get", "deploy"]));
    assert_eq!(
        header(&deploy),
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    );
    assert!(deploy.contains("2/2"), "{deploy}");
    let svc = ok(&s.kubectl(&["get", "svc"]));
    assert_eq!(
        header(&svc),
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ]
    );
    assert!(svc.contains("443/TCP"), "{svc}");
    let ns = ok(&s.kubectl(&["get", "ns"]));
    assert_eq!(header(&ns), ["NAME", "STATUS", "AGE"]);
    let all = ok(&s.kubectl(&["get", "pods", "-A", "--show-labels"]));
    assert_eq!(header(&all)[0], "NAMESPACE");
    assert_eq!(header(&all).last().unwrap(), "LABELS");
    assert!(all.contains("app=web"), "{all}");
    // the trailing-slash version path the Python client calls
    let v: Value = serde_json::from_str(&ok(&s.kubectl(&["get", "--raw", "/version/"]))).unwrap();
    assert_eq!(v["major"], "1");
    // wkctl prints the same server-side table
    let ours = stdout(&s.wkctl(&["get", "deploy"]));
    assert!(
        ours.contains("UP-TO-DATE") && ours.contains("2/2"),
        "{ours}"
    );
}

#[tokio::test]
async fn create_generators_send_protobuf_and_are_stored_right() {
    let s = Server::start().await;
    for args in [
        vec![
            "create",
            "configmap",
            "cm",
            "--from-literal=a=1",
            "--from-literal=b=2",
        ],
        vec![
            "create",
            "secret",
            "generic",
            "sec",
            "--from-literal=password=hunter2",
        ],
        vec![
            "create",
            "deployment",
            "d",
            "--image=file:///x.wasm",
            "--replicas=0",
        ],
        vec!["create", "job", "j", "--image=file:///x.wasm"],
        vec![
            "create",
            "cronjob",
            "cj",
            "--image=file:///x.wasm",
            "--schedule=*/5 * * * *",
        ],
        vec!["create", "service", "clusterip", "svc", "--tcp=80:8080"],
        vec!["create", "role", "r", "--verb=get", "--resource=pods"],
        vec!["create", "rolebinding", "rb", "--role=r", "--user=alice"],
        vec!["create", "ingress", "ing", "--rule=example.com/=svc:80"],
        vec![
            "create",
            "poddisruptionbudget",
            "pdb",
            "--selector=app=x",
            "--min-available=1",
        ],
    ] {
        ok(&s.kubectl(&args));
    }
    let cm = json_of(&s, &["get", "configmap", "cm"]);
    assert_eq!(cm["data"]["a"], "1");
    assert_eq!(cm["data"]["b"], "2");
    let sec = json_of(&s, &["get", "secret", "sec"]);
    assert_eq!(sec["data"]["password"], "aHVudGVyMg==");
    let d = json_of(&s, &["get", "deploy", "d"]);
    assert_eq!(d["spec"]["replicas"], 0);
    assert_eq!(containers(&d).len(), 1);
    assert_eq!(containers(&d)[0].1, "file:///x.wasm");
    let cj = json_of(&s, &["get", "cronjob", "cj"]);
    assert_eq!(cj["spec"]["schedule"], "*/5 * * * *");
    let svc = json_of(&s, &["get", "svc", "svc"]);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);
    let rb = json_of(&s, &["get", "rolebinding", "rb"]);
    assert_eq!(rb["subjects"][0]["name"], "alice");
    let ing = json_of(&s, &["get", "ingress", "ing"]);
    assert_eq!(ing["spec"]["rules"][0]["host"], "example.com");
    let pdb = json_of(&s, &["get", "pdb", "pdb"]);
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    let pdbs = ok(&s.kubectl(&["get", "pdb"]));
    assert_eq!(
        header(&pdbs),
        [
            "NAME",
            "MIN AVAILABLE",
            "MAX UNAVAILABLE",
            "ALLOWED DISRUPTIONS",
            "AGE"
        ]
    );
    // a protobuf body of a kind the server has no message for is refused
    // with 415 and says so, never a JSON parse error
    let (code, body) = s
        .call_raw(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/vnd.kubernetes.protobuf",
            b"k8s\0garbage".to_vec(),
        )
        .await;
    assert!(code == 400 || code == 415, "{code} {body}");
    assert!(!body.contains("expected value"), "{body}");
    let (code, body) = s
        .call_raw(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/x-www-form-urlencoded",
            b"{}".to_vec(),
        )
        .await;
    assert_eq!(code, 415, "{body}");
}

const TWO_CONTAINERS: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: main
        image: MAIN
        env:
        - {name: A, value: "1"}
      - name: side
        image: SIDE
"#;

#[tokio::test]
async fn apply_edit_apply_diff_set_and_patch_never_lose_containers() {
    let s = Server::start().await;
    let file = s.dir.join("web.yaml");
    let write = |main: &str, side: &str| {
        std::fs::write(
            &file,
            TWO_CONTAINERS.replace("MAIN", main).replace("SIDE", side),
        )
        .unwrap()
    };
    let f = file.to_str().unwrap();
    write("file:///main-1.wasm", "file:///side-1.wasm");
    ok(&s.kubectl(&["apply", "-f", f]));
    // unchanged: diff says nothing and exits 0
    let same = s.kubectl(&["diff", "-f", f]);
    assert_eq!(same.status.code(), Some(0), "{}", stderr(&same));
    // edit the file: one image changes; diff shows it and exits 1
    write("file:///main-2.wasm", "file:///side-1.wasm");
    let diff = s.kubectl(&["diff", "-f", f]);
    assert_eq!(diff.status.code(), Some(1), "{}", stderr(&diff));
    assert!(
        stdout(&diff).contains("+        image: file:///main-2.wasm"),
        "{}",
        stdout(&diff)
    );
    ok(&s.kubectl(&["apply", "-f", f]));
    let d = json_of(&s, &["get", "deploy", "web"]);
    assert_eq!(
        containers(&d),
        [
            ("main".into(), "file:///main-2.wasm".into()),
            ("side".into(), "file:///side-1.wasm".into())
        ]
    );
    // set image on one container keeps the other
    ok(&s.kubectl(&["set", "image", "deploy/web", "side=file:///side-2.wasm"]));
    let d = json_of(&s, &["get", "deploy", "web"]);
    assert_eq!(
        containers(&d),
        [
            ("main".into(), "file:///main-2.wasm".into()),
            ("side".into(), "file:///side-2.wasm".into())
        ]
    );
    // set env merges env by name
    ok(&s.kubectl(&["set", "env", "deploy/web", "-c", "main", "B=2"]));
    ok(&s.kubectl(&[
        "set",
        "resources",
        "deploy/web",
        "-c",
        "side",
        "--limits=memory=64Mi",
    ]));
    let d = json_of(&s, &["get", "deploy", "web"]);
    let c = &d["spec"]["template"]["spec"]["containers"];
    assert_eq!(c.as_array().unwrap().len(), 2);
    assert_eq!(
        c[0]["env"],
        serde_json::json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}])
    );
    assert_eq!(c[1]["resources"]["limits"]["memory"], "64Mi");
    // a strategic merge patch naming one container by key
    ok(&s.kubectl(&[
        "patch",
        "deploy",
        "web",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"main","env":[{"name":"C","value":"3"}]}]}}}}"#,
    ]));
    let d = json_of(&s, &["get", "deploy", "web"]);
    let c = &d["spec"]["template"]["spec"]["containers"];
    assert_eq!(c.as_array().unwrap().len(), 2, "{c}");
    assert_eq!(c[0]["env"].as_array().unwrap().len(), 3, "{c}");
    // $patch: delete removes one container by key
    ok(&s.kubectl(&[
        "patch",
        "deploy",
        "web",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"side","$patch":"delete"}]}}}}"#,
    ]));
    let d = json_of(&s, &["get", "deploy", "web"]);
    assert_eq!(containers(&d).len(), 1);
    assert_eq!(containers(&d)[0].0, "main");
    // re-applying the file puts side back (three-way: it is in the file)
    ok(&s.kubectl(&["apply", "-f", f]));
    let d = json_of(&s, &["get", "deploy", "web"]);
    assert_eq!(containers(&d).len(), 2);

    // kubectl validates strictly by default: an unknown field is an error
    // naming it, and nothing is written
    let bad = TWO_CONTAINERS
        .replace("MAIN", "file:///m.wasm")
        .replace("SIDE", "file:///s.wasm")
        .replace("name: web", "name: bad")
        .replace("  replicas: 1", "  replicas: 1\n  replicaz: 2");
    let o = kubectl_stdin(&s.kubeconfig(), &["apply", "-f", "-"], Some(&bad));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(r#"unknown field "spec.replicaz""#),
        "{}",
        stderr(&o)
    );
    assert!(!s.kubectl(&["get", "deploy", "bad"]).status.success());
    // --validate=warn writes it and warns
    let o = kubectl_stdin(
        &s.kubeconfig(),
        &["apply", "--validate=warn", "-f", "-"],
        Some(&bad),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("unknown field"), "{}", stderr(&o));
}

#[tokio::test]
async fn explain_reads_the_servers_openapi() {
    let s = Server::start().await;
    let out = ok(&s.kubectl(&["explain", "deployment.spec.strategy"]));
    assert!(out.contains("KIND:       Deployment"), "{out}");
    assert!(out.contains("rollingUpdate"), "{out}");
    let out = ok(&s.kubectl(&["explain", "pods.spec.containers.image"]));
    assert!(out.contains("FIELD: image <string>"), "{out}");
    let out = ok(&s.kubectl(&["explain", "pdb.spec", "--api-version=policy/v1"]));
    assert!(out.contains("minAvailable"), "{out}");
}

/// A `kind: List` file (what `kubectl get -o yaml` of several objects
/// writes): kubectl validates it itself, against `/openapi/v2`, which it
/// asks for in protobuf only.
#[tokio::test]
async fn list_files_are_validated_against_the_protobuf_openapi() {
    let s = Server::start().await;
    let list = |extra: &str| {
        format!(
            r#"{{"apiVersion": "v1", "kind": "List", "items": [
            {{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {{"name": "one"}}, "data": {{"a": "1"}}}},
            {{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {{"name": "two"}}, "data": {{"b": "2"}}{extra}}}]}}"#
        )
    };
    let out = ok(&kubectl_stdin(
        &s.kubeconfig(),
        &["create", "-f", "-"],
        Some(&list("")),
    ));
    assert!(
        out.contains("configmap/one created") && out.contains("configmap/two created"),
        "{out}"
    );
    // an unknown field in an item: kubectl's own check against the schema
    let o = kubectl_stdin(
        &s.kubeconfig(),
        &["create", "-f", "-"],
        Some(&list(r#", "bogus": 1"#)),
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(r#"unknown field "bogus" in io.k8s.api.core.v1.ConfigMap"#),
        "{}",
        stderr(&o)
    );
    // what `get -o yaml` writes applies back
    let yaml = ok(&s.kubectl(&["get", "configmaps", "one", "two", "-o", "yaml"]));
    assert!(yaml.contains("kind: List"), "{yaml}");
    let edited = yaml.replace("a: \"1\"", "a: \"3\"");
    assert_ne!(edited, yaml);
    ok(&kubectl_stdin(
        &s.kubeconfig(),
        &["apply", "-f", "-"],
        Some(&edited),
    ));
    assert_eq!(json_of(&s, &["get", "configmap", "one"])["data"]["a"], "3");
    // explain from the v2 document
    let out = ok(&s.kubectl(&[
        "explain",
        "pods.spec.containers.image",
        "--output",
        "plaintext-openapiv2",
    ]));
    assert!(out.contains("FIELD:    image <string>"), "{out}");
}

/// `kubectl rollout history|undo` for `kind/name` after moving the template
/// from `a` to `b`: the history has two revisions and undo brings `a` back.
fn history_and_undo(s: &Server, what: &str, a: &str, b: &str) {
    ok(&s.kubectl(&["rollout", "status", what, "--timeout=120s"]));
    ok(&s.kubectl(&["set", "image", what, &format!("main={b}")]));
    ok(&s.kubectl(&["rollout", "status", what, "--timeout=120s"]));
    let history = ok(&s.kubectl(&["rollout", "history", what]));
    let revisions: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.parse::<u32>().is_ok())
        .collect();
    assert_eq!(revisions, ["1", "2"], "{history}");
    let one = ok(&s.kubectl(&["rollout", "history", what, "--revision=1"]));
    assert!(one.contains(a), "{one}");
    ok(&s.kubectl(&["rollout", "undo", what]));
    ok(&s.kubectl(&["rollout", "status", what, "--timeout=120s"]));
    let image = ok(&s.kubectl(&[
        "get",
        what,
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ]));
    assert_eq!(image, a);
    let history = ok(&s.kubectl(&["rollout", "history", what]));
    let revisions: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.parse::<u32>().is_ok())
        .collect();
    assert_eq!(
        revisions,
        ["2", "3"],
        "the old revision is renumbered: {history}"
    );
    // undoing to the revision it already runs is skipped, as kubectl says
    let again = ok(&s.kubectl(&["rollout", "undo", what, "--to-revision=3"]));
    assert!(again.contains("skipped rollback"), "{again}");
}

#[tokio::test]
async fn rollout_history_and_undo_for_deployments_statefulsets_and_daemonsets() {
    let s = Server::start().await;
    let (a, b) = (image(), other_image(&s, "b"));
    let manifest = format!(
        r#"apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: db}}
spec:
  replicas: 2
  serviceName: db
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db}}}}
    spec:
      containers: [{{name: main, image: "{a}"}}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: agent}}
spec:
  selector: {{matchLabels: {{app: agent}}}}
  template:
    metadata: {{labels: {{app: agent}}}}
    spec:
      containers: [{{name: main, image: "{a}"}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers: [{{name: main, image: "{a}"}}]
"#
    );
    ok(&kubectl_stdin(
        &s.kubeconfig(),
        &["apply", "-f", "-"],
        Some(&manifest),
    ));
    for what in ["sts/db", "ds/agent", "deploy/web"] {
        history_and_undo(&s, what, &a, &b);
    }
    // the revisions are ControllerRevisions owned by their sets
    let revs = json_of(&s, &["get", "controllerrevisions"]);
    let owners: Vec<&str> = revs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r["metadata"]["ownerReferences"][0]["kind"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(owners.iter().filter(|k| **k == "StatefulSet").count(), 2);
    assert_eq!(owners.iter().filter(|k| **k == "DaemonSet").count(), 2);
    let sts = json_of(&s, &["get", "sts", "db"]);
    assert_eq!(
        sts["status"]["currentRevision"],
        sts["status"]["updateRevision"]
    );
    let pods = json_of(&s, &["get", "pods", "-l", "app=db"]);
    for p in pods["items"].as_array().unwrap() {
        assert_eq!(
            p["metadata"]["labels"]["controller-revision-hash"],
            sts["status"]["updateRevision"]
        );
    }
}

#[tokio::test]
async fn drain_respects_a_pod_disruption_budget() {
    let s = Server::start().await;
    let node = s.node_name().await;
    web_deployment(&s);
    ok(&s.kubectl(&[
        "create",
        "pdb",
        "web",
        "--selector=app=web",
        "--min-available=2",
    ]));
    eventually(30, "the budget counts both pods", || async {
        let pdb = json_of(&s, &["get", "pdb", "web"]);
        (pdb["status"]["currentHealthy"] == 2 && pdb["status"]["disruptionsAllowed"] == 0)
            .then_some(())
    })
    .await;
    let pdbs = ok(&s.kubectl(&["get", "pdb", "web"]));
    assert!(
        pdbs.lines().nth(1).unwrap().split_whitespace().nth(3) == Some("0"),
        "{pdbs}"
    );
    // the budget forbids any eviction: drain retries, then gives up
    let o = s.kubectl(&[
        "drain",
        &node,
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        "--timeout=8s",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("disruption budget"), "{}", stderr(&o));
    let pods = json_of(&s, &["get", "pods", "-l", "app=web"]);
    assert_eq!(
        pods["items"].as_array().unwrap().len(),
        2,
        "nothing evicted"
    );
    let n = json_of(&s, &["get", "node", &node]);
    assert_eq!(n["spec"]["unschedulable"], true, "drain cordons first");
    // a budget that allows one: drain evicts, the budget's status follows
    ok(&s.kubectl(&[
        "patch",
        "pdb",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"minAvailable":1}}"#,
    ]));
    eventually(30, "one disruption allowed", || async {
        (json_of(&s, &["get", "pdb", "web"])["status"]["disruptionsAllowed"] == 1).then_some(())
    })
    .await;
    let o = s.kubectl(&["drain", &node, "--ignore-daemonsets", "--timeout=8s"]);
    // one pod goes; the second would break the budget, since its
    // replacement cannot land on the cordoned node
    assert!(
        stdout(&o).contains("evicted"),
        "{}\n{}",
        stdout(&o),
        stderr(&o)
    );
    ok(&s.kubectl(&["uncordon", &node]));
    ok(&s.kubectl(&["rollout", "status", "deploy/web", "--timeout=90s"]));
    ok(&s.kubectl(&["delete", "pdb", "web"]));
    let o = s.kubectl(&["drain", &node, "--ignore-daemonsets", "--timeout=60s"]);
    assert!(o.status.success(), "{}", stderr(&o));
    eventually(60, "all web pods evicted", || async {
        json_of(&s, &["get", "pods", "-l", "app=web"])["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| {
                p["status"]["phase"] != "Running" || p["metadata"]["deletionTimestamp"].is_string()
            })
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn auth_can_i_wait_events_top_and_get_watch() {
    let s = Server::start().await;
    assert_eq!(
        ok(&s.kubectl(&["auth", "can-i", "create", "pods"])).trim(),
        "yes"
    );
    let viewer = s.user_kubeconfig("vera", &[]);
    ok(&s.kubectl(&[
        "create",
        "rolebinding",
        "vera-view",
        "--clusterrole=view",
        "--user=vera",
    ]));
    let o = crate::util::kubectl(&viewer, &["auth", "can-i", "create", "pods"]);
    assert_eq!(stdout(&o).trim(), "no");
    let o = crate::util::kubectl(&viewer, &["auth", "can-i", "list", "pods"]);
    assert_eq!(stdout(&o).trim(), "yes");
    let o = s.kubectl(&["auth", "can-i", "delete", "pods", "--as=vera"]);
    assert_eq!(stdout(&o).trim(), "no", "{}", stderr(&o));
    let list = ok(&crate::util::kubectl(&viewer, &["auth", "can-i", "--list"]));
    assert!(
        list.contains("pods") && list.contains("[get list watch]"),
        "{list}"
    );

    // get -w prints a row per change, as it happens
    let mut watch = Command::new("kubectl")
        .args(["get", "pods", "-w", "--output-watch-events"])
        .env("KUBECONFIG", s.kubeconfig())
        .env("HOME", &s.dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(watch.stdout.take().unwrap());
    let seen = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for l in lines.lines() {
            let l = l.unwrap();
            let done = l.contains("Running");
            seen.push(l);
            if done {
                break;
            }
        }
        seen
    });
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: solo}}\nspec:\n  containers: [{{name: main, image: \"{}\"}}]\n",
        image()
    );
    ok(&kubectl_stdin(
        &s.kubeconfig(),
        &["create", "-f", "-"],
        Some(&pod),
    ));
    ok(&s.kubectl(&["wait", "--for=condition=Ready", "pod/solo", "--timeout=60s"]));
    let seen = tokio::task::spawn_blocking(move || seen.join().unwrap())
        .await
        .unwrap();
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(seen[0].starts_with("EVENT"), "{seen:?}");
    assert!(
        seen.iter()
            .any(|l| l.starts_with("ADDED") && l.contains("solo")),
        "{seen:?}"
    );
    assert!(seen.last().unwrap().contains("1/1"), "{seen:?}");

    // events are written in the background: they may trail Ready a little
    eventually(10, "kubectl events shows Scheduled and Started", || async {
        let events = ok(&s.kubectl(&["events", "--for", "pod/solo"]));
        (events.contains("Scheduled") && events.contains("Started")).then_some(())
    })
    .await;
    let top = eventually(60, "pod metrics", || async {
        let o = s.kubectl(&["top", "pod", "solo"]);
        o.status.success().then(|| stdout(&o))
    })
    .await;
    assert_eq!(
        header(&top),
        ["NAME", "CPU(cores)", "MEMORY(bytes)"],
        "{top}"
    );
    let top = ok(&s.kubectl(&["top", "node"]));
    assert!(top.contains("CPU(%)"), "{top}");
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test]
async fn apply_server_side_owns_fields_conflicts_and_prunes() {
    let s = Server::start().await;
    let file = s.dir.join("web.yaml");
    let f = file.to_str().unwrap();
    std::fs::write(
        &file,
        TWO_CONTAINERS
            .replace("MAIN", "file:///main-1.wasm")
            .replace("SIDE", "file:///side-1.wasm"),
    )
    .unwrap();
    let out = ok(&s.kubectl(&["apply", "--server-side", "-f", f]));
    assert!(out.contains("serverside-applied"), "{out}");
    let yaml = ok(&s.kubectl(&[
        "get",
        "deploy",
        "web",
        "-o",
        "yaml",
        "--show-managed-fields",
    ]));
    assert!(
        yaml.contains("manager: kubectl\n    operation: Apply"),
        "{yaml}"
    );
    assert!(yaml.contains(r#"k:{"name":"main"}"#), "{yaml}");
    // re-applying the same file is a no-op that succeeds
    let rv = ok(&s.kubectl(&[
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.metadata.generation}",
    ]));
    ok(&s.kubectl(&["apply", "--server-side", "-f", f]));
    let rv2 = ok(&s.kubectl(&[
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.metadata.generation}",
    ]));
    assert_eq!(rv, rv2);
    // another manager changes a field the file sets: the next apply conflicts
    ok(&s.kubectl(&["set", "image", "deploy/web", "main=file:///main-2.wasm"]));
    let o = s.kubectl(&["apply", "--server-side", "-f", f]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(r#"Apply failed with 1 conflict: conflict with "kubectl-set" using apps/v1: .spec.template.spec.containers[name="main"].image"#),
        "{}",
        stderr(&o)
    );
    let d = json_of(&s, &["get", "deploy", "web"]);
    assert_eq!(
        containers(&d)[0].1,
        "file:///main-2.wasm",
        "nothing written"
    );
    // forced: the file wins and kubectl-set no longer owns the image
    ok(&s.kubectl(&["apply", "--server-side", "--force-conflicts", "-f", f]));
    let d = json_of(&s, &["get", "deploy", "web"]);
    assert_eq!(containers(&d)[0].1, "file:///main-1.wasm");
    // a field dropped from the file goes away: the side container and env
    let smaller = TWO_CONTAINERS
        .replace("MAIN", "file:///main-1.wasm")
        .replace("      - name: side\n        image: SIDE\n", "");
    assert!(!smaller.contains("side"));
    std::fs::write(&file, &smaller).unwrap();
    let diff = s.kubectl(&["diff", "--server-side", "-f", f]);
    assert_eq!(diff.status.code(), Some(1), "{}", stderr(&diff));
    assert!(
        stdout(&diff).contains("-        name: side"),
        "{}",
        stdout(&diff)
    );
    ok(&s.kubectl(&["apply", "--server-side", "-f", f]));
    let d = json_of(&s, &["get", "deploy", "web"]);
    assert_eq!(
        containers(&d),
        [("main".into(), "file:///main-1.wasm".into())]
    );
    // a field another manager added stays
    ok(&s.kubectl(&["annotate", "deploy", "web", "team=edge"]));
    ok(&s.kubectl(&["apply", "--server-side", "-f", f]));
    let d = json_of(&s, &["get", "deploy", "web"]);
    assert_eq!(d["metadata"]["annotations"]["team"], "edge");
}

const CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: spinapps.core.spinkube.dev
spec:
  group: core.spinkube.dev
  names: {kind: SpinApp, plural: spinapps, singular: spinapp, shortNames: [spin]}
  scope: Namespaced
  versions:
  - name: v1alpha1
    served: true
    storage: true
    subresources:
      status: {}
      scale: {specReplicasPath: .spec.replicas, statusReplicasPath: .status.readyReplicas}
    additionalPrinterColumns:
    - {name: Ready, type: integer, jsonPath: .status.readyReplicas}
    - {name: Executor, type: string, jsonPath: .spec.executor}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [image]
            properties:
              image: {type: string, description: The Spin application image}
              executor: {type: string, enum: [containerd-shim-spin, wasmkube], default: wasmkube}
              replicas: {type: integer, minimum: 0, default: 1}
          status:
            type: object
            properties:
              readyReplicas: {type: integer}
"#;

#[tokio::test]
async fn custom_resource_definitions_serve_new_kinds() {
    let s = Server::start().await;
    ok(&kubectl_stdin(
        &s.kubeconfig(),
        &["apply", "-f", "-"],
        Some(CRD),
    ));
    ok(&s.kubectl(&[
        "wait",
        "--for=condition=established",
        "crd/spinapps.core.spinkube.dev",
        "--timeout=20s",
    ]));
    let crds = ok(&s.kubectl(&["get", "crd"]));
    assert_eq!(header(&crds), ["NAME", "CREATED AT"], "{crds}");
    let app = "apiVersion: core.spinkube.dev/v1alpha1\nkind: SpinApp\nmetadata: {name: hello}\nspec: {image: ghcr.io/x/hello:v1}\n";
    ok(&kubectl_stdin(
        &s.kubeconfig(),
        &["apply", "-f", "-"],
        Some(app),
    ));
    // defaults from the schema, and the CRD's columns in tables
    let got = json_of(&s, &["get", "spin", "hello"]);
    assert_eq!(got["spec"]["executor"], "wasmkube");
    assert_eq!(got["spec"]["replicas"], 1);
    let table = ok(&s.kubectl(&["get", "spinapps"]));
    assert_eq!(
        header(&table),
        ["NAME", "READY", "EXECUTOR", "AGE"],
        "{table}"
    );
    assert!(table.contains("wasmkube"), "{table}");
    // the schema rejects what it forbids, naming the fields; unknown fields
    // are errors with kubectl's default strict validation
    let bad = "apiVersion: core.spinkube.dev/v1alpha1\nkind: SpinApp\nmetadata: {name: bad}\nspec: {replicas: -1, executor: docker}\n";
    let o = kubectl_stdin(&s.kubeconfig(), &["apply", "-f", "-"], Some(bad));
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("spec.image: Required value"), "{e}");
    assert!(
        e.contains("spec.replicas") && e.contains("greater than or equal to 0"),
        "{e}"
    );
    assert!(e.contains("spec.executor: Unsupported value"), "{e}");
    let typo = "apiVersion: core.spinkube.dev/v1alpha1\nkind: SpinApp\nmetadata: {name: typo}\nspec: {image: x, colour: red}\n";
    let o = kubectl_stdin(&s.kubeconfig(), &["apply", "-f", "-"], Some(typo));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(r#"unknown field "spec.colour""#),
        "{}",
        stderr(&o)
    );
    // explain reads the CRD's schema
    let explained = ok(&s.kubectl(&["explain", "spinapp.spec.image"]));
    assert!(
        explained.contains("The Spin application image"),
        "{explained}"
    );
    // scale and status subresources
    ok(&s.kubectl(&["scale", "spinapp", "hello", "--replicas=3"]));
    ok(&s.kubectl(&[
        "patch",
        "spinapp",
        "hello",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"readyReplicas":3}}"#,
    ]));
    let got = json_of(&s, &["get", "spinapp", "hello"]);
    assert_eq!(got["spec"]["replicas"], 3);
    assert_eq!(got["status"]["readyReplicas"], 3);
    // a status written through the main resource is ignored
    ok(&s.kubectl(&[
        "patch",
        "spinapp",
        "hello",
        "--type=merge",
        "-p",
        r#"{"status":{"readyReplicas":9}}"#,
    ]));
    assert_eq!(
        json_of(&s, &["get", "spinapp", "hello"])["status"]["readyReplicas"],
        3
    );
    // server-side apply and watch work on custom kinds too
    let out = ok(&kubectl_stdin(
        &s.kubeconfig(),
        &["apply", "--server-side", "-f", "-"],
        Some(app),
    ));
    assert!(out.contains("serverside-applied"), "{out}");
    // deleting the CRD deletes its objects and stops serving the kind
    ok(&s.kubectl(&["delete", "crd", "spinapps.core.spinkube.dev"]));
    let o = s.kubectl(&["get", "spinapps"]);
    assert!(!o.status.success());
    ok(&kubectl_stdin(
        &s.kubeconfig(),
        &["apply", "-f", "-"],
        Some(CRD),
    ));
    ok(&s.kubectl(&[
        "wait",
        "--for=condition=established",
        "crd/spinapps.core.spinkube.dev",
        "--timeout=20s",
    ]));
    let none = ok(&s.kubectl(&["get", "spinapps", "-o", "name"]));
    assert_eq!(none.trim(), "", "the old objects went with the old CRD");
}

/// A webserver guest (wasi:sockets) on its pod IP, port 8080, Ready.
async fn webserver_pod(s: &Server, name: &str) {
    let pod = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  containers:
  - name: web
    image: "{}"
    env:
    - {{name: PORT, value: "8080"}}
    - {{name: POD_NAME, value: {name}}}
    - name: POD_IP
      valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}
    ports: [{{containerPort: 8080}}]
    readinessProbe:
      tcpSocket: {{port: 8080}}
      periodSeconds: 1
"#,
        example_image("wasm32-wasip2", "webserver")
    );
    ok(&kubectl_stdin(
        &s.kubeconfig(),
        &["apply", "-f", "-"],
        Some(&pod),
    ));
    ok(&s.kubectl(&[
        "wait",
        "--for=condition=Ready",
        &format!("pod/{name}"),
        "--timeout=60s",
    ]));
}

/// `kubectl port-forward` in the background until dropped.
struct PortForward(std::process::Child);

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn port_forward(s: &Server, args: &[&str], websockets: bool) -> (PortForward, Vec<String>) {
    let mut child = Command::new("kubectl")
        .arg("port-forward")
        .args(args)
        .env("KUBECONFIG", s.kubeconfig())
        .env("HOME", &s.dir)
        // the SPDY upgrade is kubectl's fallback when the WebSocket fails;
        // this is how its users reach it on purpose
        .env(
            "KUBECTL_PORT_FORWARD_WEBSOCKETS",
            if websockets { "true" } else { "false" },
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    // "Forwarding from 127.0.0.1:PORT -> 8080" once per port and address
    while lines.len() < 2 * (args.len() - 1) {
        let mut l = String::new();
        if out.read_line(&mut l).unwrap() == 0 {
            break;
        }
        lines.push(l.trim().to_string());
    }
    std::thread::spawn(move || for _ in out.lines() {});
    (PortForward(child), lines)
}

/// `curl -si http://127.0.0.1:PORT/PATH`, as a user checks a forward.
async fn get_via(port: u16, path: &str) -> String {
    let url = format!("http://127.0.0.1:{port}{path}");
    let out = tokio::process::Command::new("curl")
        .args(["-si", "--http1.1", "-m", "10", &url])
        .output()
        .await
        .expect("curl is installed by tests/run.sh");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn port_forward_reaches_a_guest_port_over_websocket_and_spdy() {
    let s = Server::start().await;
    webserver_pod(&s, "web").await;
    for websockets in [true, false] {
        let local = crate::util::free_port();
        let (pf, lines) = port_forward(&s, &["pod/web", &format!("{local}:8080")], websockets);
        assert!(
            lines
                .iter()
                .any(|l| l == &format!("Forwarding from 127.0.0.1:{local} -> 8080")),
            "{lines:?}"
        );
        for path in ["/first", "/second"] {
            let page = get_via(local, path).await;
            assert!(page.starts_with("HTTP/1.1 200"), "{page}");
            assert!(
                page.ends_with(&format!("hello from web at {path}\n")),
                "{page}"
            );
        }
        drop(pf);
    }
    // a port nothing listens on: the connection is closed and kubectl
    // reports the agent's error
    let local = crate::util::free_port();
    let (mut pf, _) = port_forward(&s, &["pod/web", &format!("{local}:9")], true);
    let page = get_via(local, "/").await;
    assert_eq!(page, "");
    let status = tokio::task::spawn_blocking(move || {
        let st = pf.0.wait().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(pf.0.stderr.as_mut().unwrap(), &mut err).unwrap();
        (st, err)
    })
    .await
    .unwrap();
    assert!(
        status.1.contains("connection refused") || status.1.contains("Connection refused"),
        "{}",
        status.1
    );
}

#[tokio::test]
async fn attach_streams_a_running_containers_output_until_it_ends() {
    let s = Server::start().await;
    let pod = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: ticker}}
spec:
  restartPolicy: Never
  volumes: [{{name: data, emptyDir: {{}}}}]
  containers:
  - name: worker
    image: "{}"
    args: ["25", "200"]
    volumeMounts: [{{name: data, mountPath: /data}}]
"#,
        example_image("wasm32-wasip1", "worker")
    );
    ok(&kubectl_stdin(
        &s.kubeconfig(),
        &["apply", "-f", "-"],
        Some(&pod),
    ));
    ok(&s.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod/ticker",
        "--timeout=60s",
    ]));
    // attach sees what the guest writes from now on, and ends cleanly with it
    let kc = s.kubeconfig();
    let out = tokio::task::spawn_blocking(move || crate::util::kubectl(&kc, &["attach", "ticker"]))
        .await
        .unwrap();
    let text = ok(&out);
    assert!(text.ends_with("wrote tick 25\n"), "{text}");
    let ticks: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("wrote tick"))
        .collect();
    assert!(!ticks.is_empty() && ticks.len() < 25 + 1, "{text}");
    // every tick after the first one seen, in order, none lost
    let first: u32 = ticks[0].rsplit(' ').next().unwrap().parse().unwrap();
    let want: Vec<String> = (first..=25).map(|i| format!("wrote tick {i}")).collect();
    assert_eq!(ticks, want.iter().map(String::as_str).collect::<Vec<_>>());
    // a finished container cannot be attached to
    let o = s.kubectl(&["attach", "ticker"]);
    assert!(!o.status.success());
}
