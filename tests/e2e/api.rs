//! HTTP semantics of the API server, checked against a real process.

use reqwest::Method;
use serde_json::{json, Value};

use crate::util::{configmap, eventually, Server};

const CM: &str = "/api/v1/namespaces/default/configmaps";

#[tokio::test]
async fn requests_without_credentials_get_401_but_version_and_health_are_public() {
    let s = Server::start().await;
    let anon = s.anonymous();
    let r = anon
        .get(format!("{}/api/v1/pods", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["kind"], "Status");
    assert_eq!(body["reason"], "Unauthorized");
    let r = anon
        .get(format!("{}/api/v1/pods", s.url))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let v: Value = anon
        .get(format!("{}/version", s.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["major"], "1");
    assert_eq!(v["minor"], "33");
    assert!(v["gitVersion"].as_str().unwrap().starts_with("v1.33."));
    assert_eq!(
        anon.get(format!("{}/healthz", s.url))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
}

#[tokio::test]
async fn discovery_lists_every_served_kind_with_verbs_and_short_names() {
    let s = Server::start().await;
    let (_, api) = s.call(Method::GET, "/api", None).await;
    assert_eq!(api["versions"], json!(["v1"]));
    let (_, core) = s.call(Method::GET, "/api/v1", None).await;
    let names: Vec<&str> = core["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    for want in [
        "namespaces",
        "pods",
        "pods/status",
        "pods/binding",
        "services",
        "endpoints",
        "configmaps",
        "secrets",
        "nodes",
        "events",
        "persistentvolumes",
        "persistentvolumeclaims",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let (_, groups) = s.call(Method::GET, "/apis", None).await;
    let gvs: Vec<&str> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["preferredVersion"]["groupVersion"].as_str().unwrap())
        .collect();
    assert_eq!(
        gvs,
        vec![
            "apps/v1",
            "batch/v1",
            "networking.k8s.io/v1",
            "discovery.k8s.io/v1",
            "coordination.k8s.io/v1",
            "autoscaling/v2",
            "apiextensions.k8s.io/v1",
            "policy/v1",
            "rbac.authorization.k8s.io/v1",
            "authentication.k8s.io/v1",
            "authorization.k8s.io/v1",
            "metrics.k8s.io/v1beta1",
            "custom.metrics.k8s.io/v1beta2"
        ]
    );
    let (_, apps) = s.call(Method::GET, "/apis/apps/v1", None).await;
    let deploy = apps["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "deployments")
        .unwrap();
    assert_eq!(deploy["shortNames"], json!(["deploy"]));
    assert_eq!(deploy["namespaced"], true);
    assert!(deploy["verbs"]
        .as_array()
        .unwrap()
        .contains(&json!("watch")));
    assert!(apps["resources"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["name"] == "deployments/scale"));
    let (code, _) = s.call(Method::GET, "/apis/nope.example.com/v1", None).await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn create_sets_server_fields_and_revisions_increase_globally() {
    let s = Server::start().await;
    let (code, a) = s.call(Method::POST, CM, Some(configmap("a", "1"))).await;
    assert_eq!(code, 201, "{a}");
    assert!(a["metadata"]["uid"].as_str().unwrap().len() >= 32);
    assert!(a["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert_eq!(a["metadata"]["generation"], 1);
    assert_eq!(a["metadata"]["namespace"], "default");
    let (_, b) = s
        .call(
            Method::POST,
            "/api/v1/namespaces/kube-system/configmaps",
            Some(configmap("b", "1")),
        )
        .await;
    let rv = |v: &Value| {
        v["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert!(
        rv(&b) > rv(&a),
        "revisions are global across namespaces and kinds"
    );
    let (_, list) = s.call(Method::GET, "/api/v1/configmaps", None).await;
    assert_eq!(list["kind"], "ConfigMapList");
    assert!(
        list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= rv(&b)
    );
    let ours: Vec<&Value> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["metadata"]["name"] != "kube-root-ca.crt")
        .collect();
    assert_eq!(ours.len(), 2, "cluster-wide list spans namespaces");
    let (code, dup) = s.call(Method::POST, CM, Some(configmap("a", "2"))).await;
    assert_eq!(code, 409);
    assert_eq!(dup["reason"], "AlreadyExists");
    assert_eq!(dup["message"], "configmaps \"a\" already exists");
    let (code, gen) = s
        .call(
            Method::POST,
            CM,
            Some(json!({"metadata": {"generateName": "gen-"}, "data": {}})),
        )
        .await;
    assert_eq!(code, 201);
    assert!(
        gen["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("gen-")
            && gen["metadata"]["name"].as_str().unwrap().len() == 9
    );
}

#[tokio::test]
async fn stale_updates_conflict_and_generation_tracks_spec_only() {
    // the API alone: no Deployment controller writing status beside the test
    let s = Server::builder().arg("--disable-controllers").start().await;
    let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "image": "file:///w.wasm"}]}}}});
    let path = "/apis/apps/v1/namespaces/default/deployments";
    let (code, d) = s.call(Method::POST, path, Some(deploy)).await;
    assert_eq!(code, 201, "{d}");
    assert_eq!(d["spec"]["replicas"], 1, "defaulted");
    assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
    let mut changed = d.clone();
    changed["spec"]["replicas"] = json!(3);
    let (code, updated) = s
        .call(Method::PUT, &format!("{path}/web"), Some(changed.clone()))
        .await;
    assert_eq!(code, 200, "{updated}");
    assert_eq!(updated["metadata"]["generation"], 2);
    // the same stale resourceVersion again: conflict
    let (code, conflict) = s
        .call(Method::PUT, &format!("{path}/web"), Some(changed))
        .await;
    assert_eq!(code, 409);
    assert_eq!(conflict["reason"], "Conflict");
    assert!(conflict["message"]
        .as_str()
        .unwrap()
        .contains("the object has been modified"));
    // a label change does not bump generation
    let (_, labelled) = s
        .call_as(
            Method::PATCH,
            &format!("{path}/web"),
            Some(json!({"metadata": {"labels": {"x": "y"}}})),
            "application/merge-patch+json",
        )
        .await;
    assert_eq!(labelled["metadata"]["generation"], 2);
    // status goes through /status only
    let mut with_status = labelled.clone();
    with_status["status"] = json!({"replicas": 3, "readyReplicas": 3});
    let (_, main) = s
        .call(
            Method::PUT,
            &format!("{path}/web"),
            Some(with_status.clone()),
        )
        .await;
    assert!(
        main.get("status")
            .is_none_or(|st| st.get("readyReplicas").is_none()),
        "main resource ignores status: {main}"
    );
    let (code, st) = s
        .call(
            Method::PUT,
            &format!("{path}/web/status"),
            Some(with_status),
        )
        .await;
    assert_eq!(code, 200, "{st}");
    assert_eq!(st["status"]["readyReplicas"], 3);
    assert_eq!(
        st["metadata"]["generation"], 2,
        "status writes never bump generation"
    );
    let mut spec_via_status = st.clone();
    spec_via_status["spec"]["replicas"] = json!(9);
    let (_, st2) = s
        .call(
            Method::PUT,
            &format!("{path}/web/status"),
            Some(spec_via_status),
        )
        .await;
    assert_eq!(st2["spec"]["replicas"], 3, "/status ignores spec");
    // selector is immutable
    let mut sel = st2.clone();
    sel["spec"]["selector"]["matchLabels"]["app"] = json!("other");
    sel["spec"]["template"]["metadata"]["labels"]["app"] = json!("other");
    let (code, inv) = s.call(Method::PUT, &format!("{path}/web"), Some(sel)).await;
    assert_eq!(code, 422);
    assert!(
        inv["message"]
            .as_str()
            .unwrap()
            .contains("spec.selector: Invalid value"),
        "{inv}"
    );
}

#[tokio::test]
async fn validation_errors_are_status_422_naming_the_field() {
    let s = Server::start().await;
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}});
    let (code, st) = s
        .call(Method::POST, "/api/v1/namespaces/default/pods", Some(pod))
        .await;
    assert_eq!(code, 422);
    assert_eq!(
        st["message"],
        "Pod \"p\" is invalid: spec.containers[0].image: Required value"
    );
    assert_eq!(
        st["details"]["causes"][0]["field"],
        "spec.containers[0].image"
    );
    let (code, st) = s
        .call(
            Method::POST,
            "/api/v1/namespaces/default/pods",
            Some(json!({"metadata": {"name": "p"}, "spec": {"containers": 5}})),
        )
        .await;
    assert_eq!(code, 400, "{st}");
    let (code, st) = s
        .call(
            Method::POST,
            CM,
            Some(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}})),
        )
        .await;
    assert_eq!(code, 400, "{st}");
    let (code, _) = s
        .call_as(
            Method::POST,
            CM,
            Some(json!("{not json")),
            "application/json",
        )
        .await;
    assert_eq!(code, 400);
}

#[tokio::test]
async fn namespaces_gate_creation_and_deleting_one_removes_its_content() {
    let s = Server::start().await;
    let (_, nss) = s.call(Method::GET, "/api/v1/namespaces", None).await;
    let names: Vec<&str> = nss["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["metadata"]["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"default") && names.contains(&"kube-system"));
    let (code, st) = s
        .call(Method::DELETE, "/api/v1/namespaces/kube-system", None)
        .await;
    assert_eq!(code, 403, "{st}");
    assert_eq!(
        st["message"],
        "namespaces \"kube-system\" is forbidden: this namespace may not be deleted"
    );
    let (code, st) = s
        .call(
            Method::POST,
            "/api/v1/namespaces/missing/configmaps",
            Some(configmap("a", "1")),
        )
        .await;
    assert_eq!(code, 404);
    assert_eq!(st["message"], "namespaces \"missing\" not found");

    s.call(
        Method::POST,
        "/api/v1/namespaces",
        Some(json!({"metadata": {"name": "team"}})),
    )
    .await;
    for i in 0..3 {
        let (code, _) = s
            .call(
                Method::POST,
                "/api/v1/namespaces/team/configmaps",
                Some(configmap(&format!("c{i}"), "1")),
            )
            .await;
        assert_eq!(code, 201);
    }
    // a finalizer on one object holds the namespace in Terminating
    let mut held = configmap("held", "1");
    held["metadata"]["finalizers"] = json!(["example.com/hold"]);
    s.call(
        Method::POST,
        "/api/v1/namespaces/team/configmaps",
        Some(held),
    )
    .await;
    let (code, ns) = s
        .call(Method::DELETE, "/api/v1/namespaces/team", None)
        .await;
    assert_eq!(code, 200);
    assert_eq!(ns["status"]["phase"], "Terminating");
    let (code, st) = s
        .call(
            Method::POST,
            "/api/v1/namespaces/team/configmaps",
            Some(configmap("late", "1")),
        )
        .await;
    assert_eq!(code, 403, "{st}");
    assert!(st["message"]
        .as_str()
        .unwrap()
        .contains("because it is being terminated"));
    eventually(10, "plain objects deleted", || async {
        let (_, l) = s
            .call(Method::GET, "/api/v1/namespaces/team/configmaps", None)
            .await;
        let items = l["items"].as_array().unwrap().clone();
        (items.len() == 1 && items[0]["metadata"]["deletionTimestamp"].is_string()).then_some(())
    })
    .await;
    let (code, _) = s.call(Method::GET, "/api/v1/namespaces/team", None).await;
    assert_eq!(code, 200, "namespace waits for the finalizer");
    s.call_as(
        Method::PATCH,
        "/api/v1/namespaces/team/configmaps/held",
        Some(json!({"metadata": {"finalizers": null}})),
        "application/merge-patch+json",
    )
    .await;
    eventually(10, "namespace removed", || async {
        let (code, _) = s.call(Method::GET, "/api/v1/namespaces/team", None).await;
        (code == 404).then_some(())
    })
    .await;
}

#[tokio::test]
async fn finalizers_hold_deletion_until_cleared() {
    let s = Server::start().await;
    let mut cm = configmap("f", "1");
    cm["metadata"]["finalizers"] = json!(["a/b", "c/d"]);
    s.call(Method::POST, CM, Some(cm)).await;
    let (code, marked) = s.call(Method::DELETE, &format!("{CM}/f"), None).await;
    assert_eq!(code, 200);
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    let (code, still) = s.call(Method::GET, &format!("{CM}/f"), None).await;
    assert_eq!(code, 200);
    assert_eq!(still["metadata"]["finalizers"], json!(["a/b", "c/d"]));
    // JSON patch removing one finalizer: still there
    let (code, one) = s
        .call_as(
            Method::PATCH,
            &format!("{CM}/f"),
            Some(json!([{"op": "remove", "path": "/metadata/finalizers/0"}])),
            "application/json-patch+json",
        )
        .await;
    assert_eq!(code, 200, "{one}");
    assert_eq!(s.call(Method::GET, &format!("{CM}/f"), None).await.0, 200);
    // removing the last one deletes it
    let (code, _) = s
        .call_as(
            Method::PATCH,
            &format!("{CM}/f"),
            Some(json!([{"op": "remove", "path": "/metadata/finalizers/0"}])),
            "application/json-patch+json",
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(s.call(Method::GET, &format!("{CM}/f"), None).await.0, 404);
}

#[tokio::test]
async fn selectors_filter_lists_and_paging_is_consistent() {
    let s = Server::start().await;
    for i in 0..25 {
        let mut cm = configmap(&format!("cm-{i:02}"), "1");
        cm["metadata"]["labels"] =
            json!({"tier": if i % 2 == 0 { "even" } else { "odd" }, "idx": i.to_string()});
        s.call(Method::POST, CM, Some(cm)).await;
    }
    let names = |l: &Value| {
        l["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let q = |sel: &str| format!("{CM}?labelSelector={}", wasmkube::cli::get::urlencode(sel));
    assert_eq!(
        names(&s.call(Method::GET, &q("tier=even"), None).await.1).len(),
        13
    );
    // 12 odd ones, and kube-root-ca.crt, which has no tier
    assert_eq!(
        names(&s.call(Method::GET, &q("tier!=even"), None).await.1).len(),
        13
    );
    assert_eq!(
        names(&s.call(Method::GET, &q("idx in (1,2,3)"), None).await.1),
        vec!["cm-01", "cm-02", "cm-03"]
    );
    assert_eq!(
        names(
            &s.call(Method::GET, &q("idx notin (1,2,3),tier=odd"), None)
                .await
                .1
        )
        .len(),
        10
    );
    assert_eq!(
        names(&s.call(Method::GET, &q("idx"), None).await.1).len(),
        25
    );
    assert_eq!(
        names(&s.call(Method::GET, &q("!idx"), None).await.1),
        vec!["kube-root-ca.crt"]
    );
    assert_eq!(
        names(
            &s.call(
                Method::GET,
                &format!("{CM}?fieldSelector=metadata.name%3Dcm-07"),
                None
            )
            .await
            .1
        ),
        vec!["cm-07"]
    );
    let (code, bad) = s
        .call(
            Method::GET,
            &format!("{CM}?fieldSelector=spec.foo%3Dx"),
            None,
        )
        .await;
    assert_eq!(code, 400, "{bad}");
    let (code, _) = s.call(Method::GET, &q("idx in 1"), None).await;
    assert_eq!(code, 400);

    // paging: pages read at the first page's revision, even as objects change
    let mut seen = Vec::new();
    let mut path = format!("{CM}?limit=10");
    let mut pages = 0;
    loop {
        let (code, page) = s.call(Method::GET, &path, None).await;
        assert_eq!(code, 200, "{page}");
        pages += 1;
        seen.extend(names(&page));
        s.call(Method::DELETE, &format!("{CM}/cm-{:02}", 24 - pages), None)
            .await;
        s.call(
            Method::POST,
            CM,
            Some(configmap(&format!("new-{pages}"), "1")),
        )
        .await;
        match page["metadata"]["continue"].as_str() {
            Some(c) => path = format!("{CM}?limit=10&continue={c}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let mut want: Vec<String> = (0..25).map(|i| format!("cm-{i:02}")).collect();
    want.push("kube-root-ca.crt".into());
    assert_eq!(seen, want);
}

#[tokio::test]
async fn scale_and_binding_subresources() {
    let s = Server::start().await;
    let path = "/apis/apps/v1/namespaces/default/replicasets";
    let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "r"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}}}});
    s.call(Method::POST, path, Some(rs)).await;
    let (_, scale) = s.call(Method::GET, &format!("{path}/r/scale"), None).await;
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["apiVersion"], "autoscaling/v1");
    assert_eq!(scale["spec"]["replicas"], 2);
    assert_eq!(scale["status"]["selector"], "a=b");
    let (code, scaled) = s
        .call_as(
            Method::PATCH,
            &format!("{path}/r/scale"),
            Some(json!({"spec": {"replicas": 5}})),
            "application/merge-patch+json",
        )
        .await;
    assert_eq!(code, 200, "{scaled}");
    assert_eq!(
        s.call(Method::GET, &format!("{path}/r"), None).await.1["spec"]["replicas"],
        5
    );
    let mut put = scaled.clone();
    put["spec"]["replicas"] = json!(-1);
    assert_eq!(
        s.call(Method::PUT, &format!("{path}/r/scale"), Some(put))
            .await
            .0,
        422
    );

    let pods = "/api/v1/namespaces/default/pods";
    // schedulerName keeps our scheduler away: this test binds it itself
    s.call(Method::POST, pods, Some(json!({"metadata": {"name": "p"}, "spec": {"schedulerName": "manual", "containers": [{"name": "c", "image": "i:1"}]}}))).await;
    let (code, _) = s.call(Method::POST, &format!("{pods}/p/binding"), Some(json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {"kind": "Node", "name": "n1"}}))).await;
    assert_eq!(code, 201);
    assert_eq!(
        s.call(Method::GET, &format!("{pods}/p"), None).await.1["spec"]["nodeName"],
        "n1"
    );
    let (code, again) = s
        .call(
            Method::POST,
            &format!("{pods}/p/binding"),
            Some(json!({"target": {"name": "n2"}})),
        )
        .await;
    assert_eq!(code, 409, "{again}");
    // spec.nodeName cannot be changed by a plain update
    let (_, p) = s.call(Method::GET, &format!("{pods}/p"), None).await;
    let mut moved = p.clone();
    moved["spec"]["nodeName"] = json!("n3");
    assert_eq!(
        s.call(Method::PUT, &format!("{pods}/p"), Some(moved))
            .await
            .0,
        422
    );
}

#[tokio::test]
async fn server_side_apply_creates_then_merges() {
    let s = Server::start().await;
    let yaml = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"a": "1"}});
    let (code, created) = s
        .call_as(
            Method::PATCH,
            &format!("{CM}/ssa?fieldManager=test"),
            Some(yaml),
            "application/apply-patch+yaml",
        )
        .await;
    assert_eq!(code, 201, "{created}");
    let apply = |data: Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": data});
    let (code, merged) = s
        .call_as(
            Method::PATCH,
            &format!("{CM}/ssa?fieldManager=test"),
            Some(apply(json!({"a": "1", "b": "2"}))),
            "application/apply-patch+yaml",
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(merged["data"], json!({"a": "1", "b": "2"}));
    // another manager's key stays; the applier's dropped key goes
    let (code, _) = s
        .call_as(
            Method::PATCH,
            &format!("{CM}/ssa?fieldManager=other"),
            Some(json!({"data": {"c": "3"}})),
            "application/merge-patch+json",
        )
        .await;
    assert_eq!(code, 200);
    let (code, pruned) = s
        .call_as(
            Method::PATCH,
            &format!("{CM}/ssa?fieldManager=test"),
            Some(apply(json!({"b": "2"}))),
            "application/apply-patch+yaml",
        )
        .await;
    assert_eq!(code, 200, "{pruned}");
    assert_eq!(pruned["data"], json!({"b": "2", "c": "3"}));
    // an apply needs a field manager, and says so
    let (code, e) = s
        .call_as(
            Method::PATCH,
            &format!("{CM}/ssa"),
            Some(apply(json!({}))),
            "application/apply-patch+yaml",
        )
        .await;
    assert_eq!(code, 400);
    assert!(
        e["message"].as_str().unwrap().contains("fieldManager"),
        "{e}"
    );
    let (code, _) = s
        .call_as(
            Method::PATCH,
            &format!("{CM}/ssa"),
            Some(json!({})),
            "text/plain",
        )
        .await;
    assert_eq!(code, 415);
}

#[tokio::test]
async fn events_recorded_twice_are_aggregated() {
    let s = Server::start().await;
    let (_, cm) = s
        .call(Method::POST, CM, Some(configmap("subject", "1")))
        .await;
    let rec = wasmkube::client::events::Recorder::new(s.client(), "test-controller");
    rec.record(&cm, "Warning", "BackOff", "backing off")
        .await
        .unwrap();
    let e = rec
        .record(&cm, "Warning", "BackOff", "backing off")
        .await
        .unwrap();
    assert_eq!(e["count"], 2);
    rec.record(&cm, "Normal", "Other", "something else")
        .await
        .unwrap();
    let (_, list) = s
        .call(
            Method::GET,
            "/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Dsubject",
            None,
        )
        .await;
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let backoff = items.iter().find(|e| e["reason"] == "BackOff").unwrap();
    assert_eq!(backoff["count"], 2);
    assert_eq!(backoff["involvedObject"]["uid"], cm["metadata"]["uid"]);
    assert_eq!(backoff["source"]["component"], "test-controller");
}
