//! Wasm images pulled from a real OCI registry (Debian's docker-registry) on
//! loopback, pushed by the test as CNCF Wasm artifacts.

use std::process::{Child, Command, Stdio};

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use reqwest::Method;
use serde_json::{json, Value};

use crate::util::{eventually, free_port, stdout, Server};

const PODS: &str = "/api/v1/namespaces/default/pods";

pub(crate) struct Registry {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    /// Start a registry, with htpasswd basic auth when `user` is given.
    pub(crate) async fn start(user: Option<(&str, &str)>) -> Registry {
        // reqwest and oci-client use the process's rustls provider (ring)
        wasmkube::tls::install_default_provider();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut config = format!("version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n", dir.path().join("data").display());
        if let Some((u, p)) = user {
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{u}:{}\n", bcrypt::hash(p, 4).unwrap())).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: wasmkube-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (apt-get install docker-registry; tests/run.sh installs it)");
        let reg = Registry {
            child,
            port,
            _dir: dir,
        };
        eventually(30, "the registry", || async {
            let r = reqwest::get(format!("http://127.0.0.1:{port}/v2/"))
                .await
                .ok()?;
            matches!(r.status().as_u16(), 200 | 401).then_some(())
        })
        .await;
        reg
    }

    /// Push `wasm` as `repo:tag` (an application/wasm layer).
    async fn push(&self, repo_tag: &str, wasm: &[u8], auth: &RegistryAuth) -> String {
        let client = oci_client::Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            ..Default::default()
        });
        let reference = format!("127.0.0.1:{}/{repo_tag}", self.port);
        let layer = ImageLayer::new(wasm.to_vec(), "application/wasm".into(), None);
        let config = Config::new(
            b"{}".to_vec(),
            "application/vnd.wasm.config.v0+json".into(),
            None,
        );
        client
            .push(&reference.parse().unwrap(), &[layer], config, auth, None)
            .await
            .expect("push");
        reference
    }
}

fn hello() -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples/target/wasm32-wasip1/release/hello.wasm"),
    )
    .expect("examples are built by tests/run.sh")
}

fn pod(name: &str, node: &str, image: &str, policy: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"nodeName": node, "restartPolicy": "Never", "containers": [{"name": "main", "image": image, "imagePullPolicy": policy}]}})
}

async fn waiting_reason(s: &Server, name: &str, reasons: &[&str]) -> Value {
    s.wait_pod(name, &format!("{name} waits with {reasons:?}"), |p| {
        reasons.contains(
            &p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
                .as_str()
                .unwrap_or_default(),
        )
    })
    .await
}

async fn succeeded(s: &Server, name: &str) -> Value {
    s.wait_pod(name, &format!("{name} succeeds"), |p| {
        p["status"]["phase"] == "Succeeded"
    })
    .await
}

#[tokio::test]
async fn wasm_images_are_pulled_from_a_registry_honouring_pull_policy() {
    let reg = Registry::start(None).await;
    let wasm = hello();
    let image = reg
        .push("demo/hello:v1", &wasm, &RegistryAuth::Anonymous)
        .await;
    let s = Server::builder()
        .arg("--backoff-base-ms")
        .arg("200")
        .start()
        .await;
    let node = s.node_name().await;

    // Never, before anything was pulled: not on the node
    s.call(
        Method::POST,
        PODS,
        Some(pod("never-first", &node, &image, "Never")),
    )
    .await;
    let p = waiting_reason(&s, "never-first", &["ErrImageNeverPull"]).await;
    assert!(
        p["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
            .as_str()
            .unwrap()
            .contains("pull policy of Never")
    );

    s.call(
        Method::POST,
        PODS,
        Some(pod("pulled", &node, &image, "IfNotPresent")),
    )
    .await;
    let p = succeeded(&s, "pulled").await;
    assert_eq!(
        p["status"]["containerStatuses"][0]["imageID"],
        wasmkube_runtime::image::digest(&wasm).as_str()
    );
    assert!(stdout(&s.wkctl(&["logs", "pulled"])).starts_with("Hello from wasmkube!"));

    // now cached: Never works, and keeps working without the registry
    drop(reg);
    s.call(
        Method::POST,
        PODS,
        Some(pod("never-cached", &node, &image, "Never")),
    )
    .await;
    succeeded(&s, "never-cached").await;
    // Always must reach the registry, which is gone
    s.call(
        Method::POST,
        PODS,
        Some(pod("always", &node, &image, "Always")),
    )
    .await;
    waiting_reason(&s, "always", &["ErrImagePull", "ImagePullBackOff"]).await;
}

#[tokio::test]
async fn missing_tags_back_off_and_pull_secrets_authenticate() {
    let reg = Registry::start(Some(("wk", "s3cret"))).await;
    let image = reg
        .push(
            "private/hello:v1",
            &hello(),
            &RegistryAuth::Basic("wk".into(), "s3cret".into()),
        )
        .await;
    let s = Server::builder()
        .arg("--backoff-base-ms")
        .arg("200")
        .start()
        .await;
    let node = s.node_name().await;

    s.call(
        Method::POST,
        PODS,
        Some(pod("no-secret", &node, &image, "IfNotPresent")),
    )
    .await;
    waiting_reason(&s, "no-secret", &["ErrImagePull", "ImagePullBackOff"]).await;
    let missing = format!("127.0.0.1:{}/private/hello:nope", reg.port);
    s.call(
        Method::POST,
        PODS,
        Some(pod("missing-tag", &node, &missing, "IfNotPresent")),
    )
    .await;
    waiting_reason(&s, "missing-tag", &["ErrImagePull", "ImagePullBackOff"]).await;
    let events = eventually(30, "pull events", || async {
        let (_, l) = s
            .call(
                Method::GET,
                "/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Dmissing-tag",
                None,
            )
            .await;
        let reasons: Vec<String> = l["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["reason"].as_str().unwrap().to_string())
            .collect();
        (reasons.contains(&"Failed".to_string()) && reasons.contains(&"BackOff".to_string()))
            .then_some(reasons)
    })
    .await;
    assert!(events.contains(&"Pulling".to_string()));

    let dockerconfig = json!({"auths": {format!("127.0.0.1:{}", reg.port): {"username": "wk", "password": "s3cret"}}});
    s.call(Method::POST, "/api/v1/namespaces/default/secrets", Some(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "regcred"},
        "type": "kubernetes.io/dockerconfigjson", "stringData": {".dockerconfigjson": dockerconfig.to_string()}}))).await;
    let mut with_secret = pod("with-secret", &node, &image, "Always");
    with_secret["spec"]["imagePullSecrets"] = json!([{"name": "regcred"}]);
    s.call(Method::POST, PODS, Some(with_secret)).await;
    succeeded(&s, "with-secret").await;
}
