//! An existing Kubernetes client (kube-rs, with k8s-openapi types) works
//! against wasmkube: kubeconfig, CRUD, patch, list paging and the
//! kube-runtime watcher.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::{Client, Config};

use crate::util::Server;

async fn kube_client(s: &Server) -> Client {
    let kc =
        kube::config::Kubeconfig::read_from(s.kubeconfig()).expect("kube-rs reads our kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

#[tokio::test]
async fn kube_rs_crud_patch_and_paging_work() {
    let s = Server::start().await;
    let client = kube_client(&s).await;
    let info = client.apiserver_version().await.unwrap();
    assert_eq!(info.minor, "33");

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "kube-rs", "labels": {"via": "kube"}},
        // another scheduler's pod: it stays unbound, so deletion is immediate
        "spec": {"schedulerName": "manual", "containers": [{"name": "c", "image": "file:///x.wasm"}]}
    }))
    .unwrap();
    let created = pods.create(&PostParams::default(), &pod).await.unwrap();
    assert_eq!(
        created.spec.as_ref().unwrap().restart_policy.as_deref(),
        Some("Always")
    );
    let got = pods.get("kube-rs").await.unwrap();
    assert_eq!(got.metadata.uid, created.metadata.uid);
    let listed = pods
        .list(&ListParams::default().labels("via=kube"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    let patched = pods
        .patch(
            "kube-rs",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"annotations": {"a": "b"}}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.metadata.annotations.unwrap()["a"], "b");
    let err = pods.get("missing").await.unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 404),
        "{err:?}"
    );

    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    for i in 0..7 {
        let cm: ConfigMap =
            serde_json::from_value(serde_json::json!({"metadata": {"name": format!("p{i}")}}))
                .unwrap();
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }
    let page = cms.list(&ListParams::default().limit(3)).await.unwrap();
    assert_eq!(page.items.len(), 3);
    let next = cms
        .list(
            &ListParams::default()
                .limit(3)
                .continue_token(page.metadata.continue_.as_deref().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(next.items.len(), 3);
    assert_ne!(page.items[0].metadata.name, next.items[0].metadata.name);

    let deploys: Api<Deployment> = Api::default_namespaced(client.clone());
    let d: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "d"},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}}}
    }))
    .unwrap();
    deploys.create(&PostParams::default(), &d).await.unwrap();
    let scale = deploys.get_scale("d").await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(1));
    deploys
        .patch_scale(
            "d",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 4}})),
        )
        .await
        .unwrap();
    assert_eq!(
        deploys.get("d").await.unwrap().spec.unwrap().replicas,
        Some(4)
    );
    pods.delete("kube-rs", &DeleteParams::default())
        .await
        .unwrap();
    assert!(pods.get_opt("kube-rs").await.unwrap().is_none());
}

#[tokio::test]
async fn kube_runtime_watcher_sees_initial_state_and_changes() {
    let s = Server::start().await;
    let client = kube_client(&s).await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client);
    let mk = |n: &str| {
        serde_json::from_value::<ConfigMap>(serde_json::json!({"metadata": {"name": n}})).unwrap()
    };
    cms.create(&PostParams::default(), &mk("before"))
        .await
        .unwrap();
    let mut stream = watcher::watcher(cms.clone(), watcher::Config::default()).boxed();
    let mut initial = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Event::InitApply(o) => initial.push(o.metadata.name.unwrap()),
            Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(initial, vec!["before", "kube-root-ca.crt"]);
    cms.create(&PostParams::default(), &mk("after"))
        .await
        .unwrap();
    cms.delete("before", &DeleteParams::default())
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(10), stream.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Event::Apply(o) => seen.push(format!("apply {}", o.metadata.name.unwrap())),
            Event::Delete(o) => seen.push(format!("delete {}", o.metadata.name.unwrap())),
            _ => {}
        }
    }
    assert_eq!(seen, vec!["apply after", "delete before"]);
}

#[tokio::test]
async fn kube_rs_server_side_apply_and_strategic_patches() {
    let s = Server::start().await;
    let client = kube_client(&s).await;
    let deploys: Api<Deployment> = Api::default_namespaced(client.clone());
    let config = |image: &str| {
        serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "ssa"},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"a": "b"}},
                "template": {"metadata": {"labels": {"a": "b"}},
                    "spec": {"containers": [{"name": "main", "image": image}, {"name": "side", "image": "s"}]}}}
        })
    };
    let ssa = PatchParams::apply("kube-rs-test");
    let d = deploys
        .patch("ssa", &ssa, &Patch::Apply(config("a")))
        .await
        .expect("apply creates");
    let managers: Vec<_> = d
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .map(|m| (m.manager.unwrap(), m.operation.unwrap()))
        .collect();
    assert!(
        managers.contains(&("kube-rs-test".into(), "Apply".into())),
        "{managers:?}"
    );
    // a strategic merge patch by another manager changes one container by key
    deploys
        .patch(
            "ssa",
            &PatchParams::default(),
            &Patch::Strategic(serde_json::json!({"spec": {"template": {"spec": {"containers": [{"name": "main", "image": "b"}]}}}})),
        )
        .await
        .unwrap();
    let d = deploys.get("ssa").await.unwrap();
    let images: Vec<_> = d
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers
        .into_iter()
        .map(|c| c.image.unwrap())
        .collect();
    assert_eq!(images, ["b", "s"]);
    // applying the old image now conflicts, naming the field and its manager
    let err = deploys
        .patch("ssa", &ssa, &Patch::Apply(config("a")))
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 409);
            assert!(
                s.message
                    .contains(r#".spec.template.spec.containers[name="main"].image"#),
                "{}",
                s.message
            );
        }
        other => panic!("{other:?}"),
    }
    let d = deploys
        .patch("ssa", &ssa.clone().force(), &Patch::Apply(config("a")))
        .await
        .unwrap();
    assert_eq!(
        d.spec.unwrap().template.spec.unwrap().containers[0]
            .image
            .as_deref(),
        Some("a")
    );
}

#[tokio::test]
async fn kube_rs_port_forward_reaches_a_guest() {
    let s = Server::start().await;
    let client = kube_client(&s).await;
    let pods: Api<Pod> = Api::default_namespaced(client);
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {"containers": [{"name": "web",
            "image": crate::util::example_image("wasm32-wasip2", "webserver"),
            "env": [{"name": "PORT", "value": "8080"}, {"name": "POD_NAME", "value": "web"},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    kube::runtime::wait::await_condition(pods.clone(), "web", |p: Option<&Pod>| {
        p.and_then(|p| p.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    })
    .await
    .unwrap();
    let mut pf = pods.portforward("web", &[8080]).await.unwrap();
    let mut stream = pf.take_stream(8080).unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /kube-rs HTTP/1.0\r\nHost: web\r\n\r\n")
        .await
        .unwrap();
    let mut page = String::new();
    stream.read_to_string(&mut page).await.unwrap();
    assert!(page.ends_with("hello from web at /kube-rs\n"), "{page}");
    drop(stream);
    pf.abort();
}
