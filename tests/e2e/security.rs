//! Secure by default, driven with the real kubectl and the kubeconfig as the
//! server wrote it: TLS only, generated CAs, x509 and ServiceAccount
//! identities, RBAC with escalation prevention, impersonation, projected
//! tokens used from inside a pod, Secrets encrypted at rest, the audit log,
//! and what bad clients get.

use std::path::Path;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::util::{eventually, kubectl, stderr, stdout, wk, Server};

fn ok(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

fn fails(o: &std::process::Output) -> String {
    assert!(!o.status.success(), "expected a failure: {}", stdout(o));
    stderr(o)
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

async fn namespace(s: &Server, name: &str) {
    ok(&s.kubectl(&["create", "namespace", name]));
    // a new namespace's default ServiceAccount and CA bundle come from controllers
    eventually(10, "the namespace is set up", || async {
        let (sa, _) = s
            .call(
                Method::GET,
                &format!("/api/v1/namespaces/{name}/serviceaccounts/default"),
                None,
            )
            .await;
        let (cm, _) = s
            .call(
                Method::GET,
                &format!("/api/v1/namespaces/{name}/configmaps/kube-root-ca.crt"),
                None,
            )
            .await;
        (sa == 200 && cm == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn kubectl_works_with_the_written_kubeconfig_over_tls_only() {
    let s = Server::builder()
        .arg("--tls-san")
        .arg("api.example.com,10.9.8.7")
        .start()
        .await;
    let node = s.node_name().await;
    assert!(ok(&s.kubectl(&["get", "nodes"])).contains(&node));
    assert!(ok(&s.kubectl(&["get", "namespaces"])).contains("kube-system"));
    let who = ok(&s.kubectl(&["auth", "whoami"]));
    assert!(
        who.contains("system:admin") && who.contains("system:masters"),
        "{who}"
    );
    assert_eq!(ok(&s.kubectl(&["auth", "can-i", "*", "*"])).trim(), "yes");

    // what was written, and who may read it
    let kc = std::fs::read_to_string(s.kubeconfig()).unwrap();
    assert!(s.url.starts_with("https://"), "{}", s.url);
    for field in [
        "certificate-authority-data",
        "client-certificate-data",
        "client-key-data",
    ] {
        assert!(kc.contains(field), "{field} missing from the kubeconfig");
    }
    assert!(!kc.contains("token"), "no admin token: a certificate");
    assert_eq!(mode(&s.kubeconfig()), 0o600);
    assert_eq!(mode(&s.dir.join("token")), 0o600);
    assert_eq!(mode(&s.dir.join("cred/encryption-config.json")), 0o600);
    for f in std::fs::read_dir(s.dir.join("tls")).unwrap() {
        let p = f.unwrap().path();
        if p.extension().is_some_and(|e| e == "key") {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
    }
    // a server CA and a client CA, as in k3s
    let server_ca = std::fs::read_to_string(s.dir.join("tls/server-ca.crt")).unwrap();
    let client_ca = std::fs::read_to_string(s.dir.join("tls/client-ca.crt")).unwrap();
    assert_ne!(server_ca, client_ca);
    assert_eq!(s.ca(), server_ca, "the kubeconfig trusts the server CA");
    // the serving certificate's names
    let serving = wasmkube::tls::CertInfo::from_pem(
        &std::fs::read_to_string(s.dir.join("tls/serving-kube-apiserver.crt")).unwrap(),
    )
    .unwrap();
    for name in [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        "api.example.com",
    ] {
        assert!(
            serving.dns_names.iter().any(|d| d == name),
            "{name}: {serving:?}"
        );
    }
    let (_, svc) = s
        .call(
            Method::GET,
            "/api/v1/namespaces/default/services/kubernetes",
            None,
        )
        .await;
    for ip in [
        "127.0.0.1",
        "10.9.8.7",
        svc["spec"]["clusterIP"].as_str().unwrap(),
    ] {
        assert!(
            serving.ips.contains(&ip.parse().unwrap()),
            "{ip}: {serving:?}"
        );
    }
    // the kubernetes Service's endpoints are the API server
    let (_, ep) = s
        .call(
            Method::GET,
            "/api/v1/namespaces/default/endpoints/kubernetes",
            None,
        )
        .await;
    let port = s.url.rsplit(':').next().unwrap().parse::<u64>().unwrap();
    assert_eq!(ep["subsets"][0]["ports"][0]["port"], port, "{ep}");

    // plain HTTP gets nowhere
    let plain = s.url.replacen("https://", "http://", 1);
    let r = reqwest::Client::new()
        .get(format!("{plain}/api/v1/pods"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(
        r.is_err() || r.is_ok_and(|r| !r.status().is_success()),
        "plain HTTP must not be served"
    );
}

#[tokio::test]
async fn leaf_certificates_close_to_expiry_are_renewed_at_start() {
    let mut s = Server::start().await;
    let path = s.dir.join("tls/serving-kube-apiserver.crt");
    let first = std::fs::read_to_string(&path).unwrap();
    // replace it with a certificate of the same CA that ends tomorrow
    let ca = wasmkube::tls::Ca::load_or_create(&s.dir.join("tls"), "server-ca", "x").unwrap();
    let old = wasmkube::tls::CertInfo::from_pem(&first).unwrap();
    let short = ca
        .issue(
            &wasmkube::tls::LeafSpec::server(
                &old.common_name,
                old.dns_names.clone(),
                old.ips.clone(),
            ),
            Duration::from_secs(24 * 3600),
        )
        .unwrap();
    std::fs::write(&path, &short.cert).unwrap();
    std::fs::write(s.dir.join("tls/serving-kube-apiserver.key"), &short.key).unwrap();
    s.restart().await;
    let renewed =
        wasmkube::tls::CertInfo::from_pem(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(
        renewed.remaining() > Duration::from_secs(300 * 24 * 3600),
        "renewed for a year: {renewed:?}"
    );
    // the CA stays: the kubeconfig written before still works
    assert!(ok(&s.kubectl(&["get", "ns"])).contains("default"));
}

#[tokio::test]
async fn anonymous_requests_reach_only_health_and_version() {
    let s = Server::start().await;
    let anon = s.anonymous();
    for path in ["/healthz", "/livez", "/readyz", "/version", "/version/"] {
        let r = anon.get(format!("{}{path}", s.url)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
    }
    for path in [
        "/api",
        "/apis",
        "/api/v1/namespaces",
        "/apis/apps/v1/deployments",
        "/openid/v1/jwks",
        "/.well-known/openid-configuration",
        "/wk/v1/snapshot",
        "/raft/vote",
        "/metrics",
    ] {
        let r = anon.get(format!("{}{path}", s.url)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["reason"], "Unauthorized", "{path}");
    }
}

#[tokio::test]
async fn rbac_grants_what_bindings_say_and_nobody_grants_what_they_lack() {
    let s = Server::start().await;
    namespace(&s, "team").await;
    let jane = s.user_kubeconfig("jane", &[]);

    // nothing bound yet: 403 worded as kube-apiserver words it
    let e = fails(&kubectl(&jane, &["get", "pods", "-n", "team"]));
    assert!(
        e.contains("pods is forbidden: User \"jane\" cannot list resource \"pods\" in API group \"\" in the namespace \"team\""),
        "{e}"
    );
    ok(&s.kubectl(&[
        "create",
        "rolebinding",
        "jane-view",
        "--clusterrole=view",
        "--user=jane",
        "-n",
        "team",
    ]));
    let out = kubectl(&jane, &["get", "pods", "-n", "team"]);
    ok(&out);
    assert!(
        stderr(&out).contains("No resources found"),
        "{}",
        stderr(&out)
    );
    let e = fails(&kubectl(&jane, &["get", "secrets", "-n", "team"]));
    assert!(e.contains("cannot list resource \"secrets\""), "{e}");
    let e = fails(&kubectl(&jane, &["get", "pods", "-n", "default"]));
    assert!(e.contains("in the namespace \"default\""), "{e}");
    let e = fails(&kubectl(&jane, &["get", "nodes"]));
    assert!(e.contains("at the cluster scope"), "{e}");
    // wkctl reads the same kubeconfig and gets the same answers
    let w = |args: &[&str]| {
        std::process::Command::new(crate::util::WKCTL)
            .args(args)
            .env("KUBECONFIG", &jane)
            .output()
            .unwrap()
    };
    assert!(w(&["get", "pods", "-n", "team"]).status.success());
    let e = w(&["get", "secrets", "-n", "team"]);
    assert!(!e.status.success());
    assert!(
        stderr(&e).contains("User \"jane\" cannot list resource \"secrets\""),
        "{}",
        stderr(&e)
    );
    // can-i, its list, and the same questions asked for her by an admin
    assert_eq!(
        ok(&kubectl(
            &jane,
            &["auth", "can-i", "list", "pods", "-n", "team"]
        ))
        .trim(),
        "yes"
    );
    let no = kubectl(&jane, &["auth", "can-i", "create", "pods", "-n", "team"]);
    assert_eq!((no.status.code(), stdout(&no).trim()), (Some(1), "no"));
    let list = ok(&kubectl(&jane, &["auth", "can-i", "--list", "-n", "team"]));
    assert!(
        list.lines()
            .any(|l| l.starts_with("pods ") && l.contains("[get list watch]")),
        "{list}"
    );
    assert_eq!(
        ok(&s.kubectl(&[
            "auth",
            "can-i",
            "list",
            "deployments.apps",
            "-n",
            "team",
            "--as",
            "jane"
        ]))
        .trim(),
        "yes"
    );
    assert_eq!(
        stdout(&s.kubectl(&["auth", "can-i", "delete", "pods", "-n", "team", "--as", "jane"]))
            .trim(),
        "no"
    );
    // impersonation: an admin acts as jane; jane may not act as anyone
    let out = s.kubectl(&["get", "pods", "-n", "team", "--as", "jane"]);
    ok(&out);
    assert!(stderr(&out).contains("No resources"), "{}", stderr(&out));
    let e = fails(&s.kubectl(&["get", "pods", "-n", "default", "--as", "jane"]));
    assert!(e.contains("User \"jane\" cannot list"), "{e}");
    let e = fails(&kubectl(
        &jane,
        &["get", "pods", "-n", "team", "--as", "system:admin"],
    ));
    assert!(
        e.contains("users \"system:admin\" is forbidden: User \"jane\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"),
        "{e}"
    );

    // an `edit` user cannot make itself cluster-admin
    let bob = s.user_kubeconfig("bob", &[]);
    ok(&s.kubectl(&[
        "create",
        "clusterrolebinding",
        "bob-edit",
        "--clusterrole=edit",
        "--user=bob",
    ]));
    let e = fails(&kubectl(
        &bob,
        &[
            "create",
            "clusterrolebinding",
            "steal",
            "--clusterrole=cluster-admin",
            "--user=bob",
        ],
    ));
    assert!(
        e.contains("clusterrolebindings.rbac.authorization.k8s.io is forbidden: User \"bob\" cannot create resource \"clusterrolebindings\""),
        "{e}"
    );
    // an `admin` of a namespace may bind what it holds there, nothing more
    let carol = s.user_kubeconfig("carol", &["team-leads"]);
    ok(&s.kubectl(&[
        "create",
        "rolebinding",
        "leads-admin",
        "--clusterrole=admin",
        "--group=team-leads",
        "-n",
        "team",
    ]));
    let e = fails(&kubectl(
        &carol,
        &[
            "create",
            "rolebinding",
            "steal",
            "--clusterrole=cluster-admin",
            "--user=carol",
            "-n",
            "team",
        ],
    ));
    assert!(
        e.contains("is attempting to grant RBAC permissions not currently held")
            && e.contains("{APIGroups:[\"*\"], Resources:[\"*\"], Verbs:[\"*\"]}"),
        "{e}"
    );
    ok(&kubectl(
        &carol,
        &[
            "create",
            "rolebinding",
            "dave-view",
            "--clusterrole=view",
            "--user=dave",
            "-n",
            "team",
        ],
    ));
    ok(&kubectl(
        &carol,
        &[
            "create",
            "role",
            "db-reader",
            "--verb=get",
            "--resource=secrets",
            "--resource-name=db",
            "-n",
            "team",
        ],
    ));
    let e = fails(&kubectl(
        &carol,
        &[
            "create",
            "role",
            "nodes",
            "--verb=list",
            "--resource=nodes",
            "-n",
            "team",
        ],
    ));
    assert!(e.contains("not currently held"), "{e}");

    // resourceNames: one secret, not the others, not the list
    let dave = s.user_kubeconfig("dave", &[]);
    ok(&kubectl(
        &carol,
        &[
            "create",
            "rolebinding",
            "dave-db",
            "--role=db-reader",
            "--user=dave",
            "-n",
            "team",
        ],
    ));
    for name in ["db", "other"] {
        let (code, _) = s
            .call(
                Method::POST,
                "/api/v1/namespaces/team/secrets",
                Some(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": {"k": "v"}})),
            )
            .await;
        assert_eq!(code, 201);
    }
    ok(&kubectl(&dave, &["get", "secret", "db", "-n", "team"]));
    let e = fails(&kubectl(&dave, &["get", "secret", "other", "-n", "team"]));
    assert!(e.contains("secrets \"other\" is forbidden"), "{e}");
    fails(&kubectl(&dave, &["get", "secrets", "-n", "team"]));
    // non-resource URLs
    let r = s
        .http_for(&dave)
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["message"],
        "forbidden: User \"dave\" cannot get path \"/metrics\""
    );

    // aggregation: a role labelled for `view` extends it
    let widgets = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "widgets-view", "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}},
        "rules": [{"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": ["get", "list"]}]});
    let (code, body) = s
        .call(
            Method::POST,
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            Some(widgets),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    eventually(10, "view aggregates the widgets rule", || async {
        let review = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {"namespace": "team", "verb": "list", "group": "example.com", "resource": "widgets"}}});
        let r = s
            .http_for(&jane)
            .post(format!("{}/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", s.url))
            .json(&review)
            .send()
            .await
            .ok()?;
        let v: Value = r.json().await.ok()?;
        (v["status"]["allowed"] == true).then_some(())
    })
    .await;
    // and `admin` (which aggregates `edit`, which aggregates `view`) gets it
    // too: one reconcile per link of the chain, so it converges a little later
    eventually(
        10,
        "admin aggregates the widgets rule through edit",
        || async {
            let (_, admin) = s
                .call(
                    Method::GET,
                    "/apis/rbac.authorization.k8s.io/v1/clusterroles/admin",
                    None,
                )
                .await;
            admin["rules"].to_string().contains("widgets").then_some(())
        },
    )
    .await;
    // a binding to a role that does not exist says so
    let ghost = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "ghost", "namespace": "team"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "nope"},
        "subjects": [{"kind": "User", "name": "jane", "apiGroup": "rbac.authorization.k8s.io"}]});
    let r = s
        .http_for(&carol)
        .post(format!(
            "{}/apis/rbac.authorization.k8s.io/v1/namespaces/team/rolebindings",
            s.url
        ))
        .json(&ghost)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    // a changed roleRef is refused, as in Kubernetes
    let (_, mut rb) = s
        .call(
            Method::GET,
            "/apis/rbac.authorization.k8s.io/v1/namespaces/team/rolebindings/jane-view",
            None,
        )
        .await;
    rb["roleRef"]["name"] = json!("edit");
    let (code, body) = s
        .call(
            Method::PUT,
            "/apis/rbac.authorization.k8s.io/v1/namespaces/team/rolebindings/jane-view",
            Some(rb),
        )
        .await;
    assert_eq!(code, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("cannot change roleRef"),
        "{body}"
    );
}

/// `kubectl create token`, as a user would.
fn create_token(s: &Server, ns: &str, sa: &str, extra: &[&str]) -> String {
    let mut args = vec!["create", "token", sa, "-n", ns];
    args.extend_from_slice(extra);
    ok(&s.kubectl(&args)).trim().to_string()
}

async fn get_as(s: &Server, token: &str, path: &str) -> (u16, Value) {
    let r = s
        .anonymous()
        .get(format!("{}{path}", s.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn service_account_tokens_work_until_their_account_or_pod_goes() {
    let s = Server::start().await;
    namespace(&s, "team").await;
    let token = create_token(&s, "team", "default", &[]);
    let (code, body) = get_as(&s, &token, "/api/v1/namespaces/team/pods").await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("User \"system:serviceaccount:team:default\" cannot list resource \"pods\""),
        "{body}"
    );
    ok(&s.kubectl(&[
        "create",
        "rolebinding",
        "sa-view",
        "--clusterrole=view",
        "--serviceaccount=team:default",
        "-n",
        "team",
    ]));
    assert_eq!(
        get_as(&s, &token, "/api/v1/namespaces/team/pods").await.0,
        200
    );
    // kubectl with that token: whoami and the groups Kubernetes gives
    let kc = s.token_kubeconfig("sa", &token);
    let who = ok(&kubectl(&kc, &["auth", "whoami"]));
    for want in [
        "system:serviceaccount:team:default",
        "system:serviceaccounts",
        "system:serviceaccounts:team",
        "system:authenticated",
    ] {
        assert!(who.contains(want), "{want}: {who}");
    }
    // the claims Kubernetes uses, and the published keys that verify them
    let parts: Vec<&str> = token.split('.').collect();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header: Value = serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
    let claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(
        claims["iss"],
        "https://kubernetes.default.svc.cluster.local"
    );
    assert_eq!(claims["sub"], "system:serviceaccount:team:default");
    assert_eq!(claims["kubernetes.io"]["namespace"], "team");
    assert_eq!(claims["kubernetes.io"]["serviceaccount"]["name"], "default");
    let (code, jwks) = get_as(&s, &token, "/openid/v1/jwks").await;
    assert_eq!(code, 200, "ServiceAccounts may read the issuer's keys");
    assert_eq!(jwks["keys"][0]["kid"], header["kid"]);
    assert_eq!(jwks["keys"][0]["alg"], "ES256");
    let (_, oidc) = get_as(&s, &token, "/.well-known/openid-configuration").await;
    assert_eq!(oidc["issuer"], claims["iss"]);

    // audiences and expiry as asked; a token for another audience is not for us
    let vault = create_token(
        &s,
        "team",
        "default",
        &["--audience", "vault", "--duration", "15m"],
    );
    assert_eq!(
        get_as(&s, &vault, "/api/v1/namespaces/team/pods").await.0,
        401
    );
    let e = fails(&s.kubectl(&[
        "create",
        "token",
        "default",
        "-n",
        "team",
        "--duration",
        "1m",
    ]));
    assert!(e.contains("10 minutes"), "{e}");

    // forged, tampered and expired tokens
    let other = wasmkube::auth::token::Signer::from_pem(
        &wasmkube::tls::pki::new_signing_key().unwrap(),
        wasmkube::auth::token::DEFAULT_ISSUER,
    )
    .unwrap();
    let sa_uid = claims["kubernetes.io"]["serviceaccount"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let sa_ref = wasmkube::auth::token::Ref {
        name: "default".into(),
        uid: sa_uid.clone(),
    };
    let forged = other
        .sign(&other.claims("team", sa_ref.clone(), vec![], 3600, None, None))
        .unwrap();
    assert_eq!(
        get_as(&s, &forged, "/api/v1/namespaces/team/pods").await.0,
        401
    );
    let real = wasmkube::auth::token::Signer::from_pem(
        &std::fs::read_to_string(s.dir.join("tls/service.key")).unwrap(),
        wasmkube::auth::token::DEFAULT_ISSUER,
    )
    .unwrap();
    let expired = real
        .sign(&real.claims("team", sa_ref.clone(), vec![], -60, None, None))
        .unwrap();
    assert_eq!(
        get_as(&s, &expired, "/api/v1/namespaces/team/pods").await.0,
        401
    );
    let mut payload = claims.clone();
    payload["kubernetes.io"]["namespace"] = json!("kube-system");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(payload.to_string()),
        parts[2]
    );
    assert_eq!(
        get_as(&s, &tampered, "/api/v1/namespaces/team/pods")
            .await
            .0,
        401
    );
    assert_eq!(
        get_as(&s, "not-a-token", "/api/v1/namespaces/team/pods")
            .await
            .0,
        401
    );

    // a token bound to a pod ends with the pod
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "holder"},
        "spec": {"nodeName": "nowhere", "containers": [{"name": "c", "image": "file:///x.wasm"}]}});
    let (code, created) = s
        .call(Method::POST, "/api/v1/namespaces/team/pods", Some(pod))
        .await;
    assert_eq!(code, 201, "{created}");
    let uid = created["metadata"]["uid"].as_str().unwrap();
    let bound = create_token(
        &s,
        "team",
        "default",
        &[
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            "holder",
            "--bound-object-uid",
            uid,
        ],
    );
    assert_eq!(
        get_as(&s, &bound, "/api/v1/namespaces/team/pods").await.0,
        200
    );
    let (_, review) = s
        .call(
            Method::POST,
            "/apis/authentication.k8s.io/v1/tokenreviews",
            Some(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": bound}})),
        )
        .await;
    assert_eq!(review["status"]["authenticated"], true, "{review}");
    assert_eq!(
        review["status"]["user"]["extra"]["authentication.kubernetes.io/pod-name"][0],
        "holder"
    );
    let (code, _) = s
        .call(
            Method::DELETE,
            "/api/v1/namespaces/team/pods/holder",
            Some(json!({"gracePeriodSeconds": 0})),
        )
        .await;
    assert_eq!(code, 200);
    eventually(10, "the bound token stops working", || async {
        (get_as(&s, &bound, "/api/v1/namespaces/team/pods").await.0 == 401).then_some(())
    })
    .await;
    // and every token of an account ends with the account (even when a new
    // one of the same name is made)
    ok(&s.kubectl(&["delete", "serviceaccount", "default", "-n", "team"]));
    assert_eq!(
        get_as(&s, &token, "/api/v1/namespaces/team/pods").await.0,
        401
    );
    eventually(10, "the default account is back", || async {
        let (c, sa) = s
            .call(
                Method::GET,
                "/api/v1/namespaces/team/serviceaccounts/default",
                None,
            )
            .await;
        (c == 200 && sa["metadata"]["uid"] != sa_uid.as_str()).then_some(())
    })
    .await;
    assert_eq!(
        get_as(&s, &token, "/api/v1/namespaces/team/pods").await.0,
        401
    );
}

#[tokio::test]
async fn pods_get_a_projected_token_and_call_the_api_the_in_cluster_way() {
    let s = Server::start().await;
    namespace(&s, "team").await;
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "incluster", "namespace": "team"},
        "spec": {"containers": [{"name": "fn", "image": crate::util::example_image("wasm32-wasip2", "incluster"),
            "ports": [{"name": "http", "containerPort": 8080}]}]}});
    let (code, created) = s
        .call(Method::POST, "/api/v1/namespaces/team/pods", Some(pod))
        .await;
    assert_eq!(code, 201, "{created}");
    // ServiceAccount admission: the account, and its projected volume mounted read-only
    assert_eq!(created["spec"]["serviceAccountName"], "default");
    let vol = created["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"].as_str().unwrap().starts_with("kube-api-access-"))
        .expect("a kube-api-access volume");
    let sources = vol["projected"]["sources"].to_string();
    assert!(
        sources.contains("serviceAccountToken") && sources.contains("kube-root-ca.crt"),
        "{sources}"
    );
    let mount = &created["spec"]["containers"][0]["volumeMounts"][0];
    assert_eq!(
        mount["mountPath"],
        "/var/run/secrets/kubernetes.io/serviceaccount"
    );
    assert_eq!(mount["readOnly"], true);

    let p = eventually(60, "the function runs", || async {
        let (_, p) = s
            .call(Method::GET, "/api/v1/namespaces/team/pods/incluster", None)
            .await;
        p["status"]["containerStatuses"][0]["state"]["running"]
            .is_object()
            .then_some(p)
    })
    .await;
    let base = format!("http://{}:8080", p["status"]["podIP"].as_str().unwrap());
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let call = |path: &str| {
        let (http, url) = (http.clone(), format!("{base}{path}"));
        async move {
            let r = http.get(url).send().await.ok()?;
            let code = r.status().as_u16();
            Some((code, r.json::<Value>().await.ok()?))
        }
    };
    // through KUBERNETES_SERVICE_HOST, TLS verified with the mounted ca.crt's
    // CA, authenticated with the mounted token: not allowed to list yet
    let (code, body) = eventually(30, "the function reaches the API", || {
        call("/api/v1/namespaces/NAMESPACE/pods")
    })
    .await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("system:serviceaccount:team:default"),
        "{body}"
    );
    let (code, who) = call("/whoami").await.unwrap();
    assert_eq!(code, 201, "{who}");
    assert_eq!(
        who["status"]["userInfo"]["username"],
        "system:serviceaccount:team:default"
    );
    assert_eq!(
        who["status"]["userInfo"]["extra"]["authentication.kubernetes.io/pod-name"][0],
        "incluster"
    );
    ok(&s.kubectl(&[
        "create",
        "rolebinding",
        "fn-view",
        "--clusterrole=view",
        "--serviceaccount=team:default",
        "-n",
        "team",
    ]));
    let (code, list) = call("/api/v1/namespaces/NAMESPACE/pods").await.unwrap();
    assert_eq!(code, 200, "{list}");
    assert!(
        list["items"].to_string().contains("\"incluster\""),
        "{list}"
    );

    // opting out mounts nothing; an account that does not exist is refused
    let quiet = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "quiet"},
        "spec": {"automountServiceAccountToken": false, "nodeName": "nowhere", "containers": [{"name": "c", "image": "file:///x.wasm"}]}});
    let (_, q) = s
        .call(Method::POST, "/api/v1/namespaces/team/pods", Some(quiet))
        .await;
    assert!(q["spec"]["volumes"].is_null(), "{q}");
    let ghost = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ghost"},
        "spec": {"serviceAccountName": "nobody", "containers": [{"name": "c", "image": "file:///x.wasm"}]}});
    let (code, e) = s
        .call(Method::POST, "/api/v1/namespaces/team/pods", Some(ghost))
        .await;
    assert_eq!(code, 403, "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("serviceaccount \"nobody\" not found"),
        "{e}"
    );
}

#[tokio::test]
async fn secrets_are_encrypted_at_rest_and_their_key_rotates() {
    let mut s = Server::start().await;
    let plain = format!("hunter2-{}", uuid::Uuid::new_v4());
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(&plain);
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"}, "stringData": {"password": plain}});
    let (code, body) = s
        .call(
            Method::POST,
            "/api/v1/namespaces/default/secrets",
            Some(secret),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let shown = ok(&s.kubectl(&["get", "secret", "db", "-o", "jsonpath={.data.password}"]));
    assert_eq!(shown, encoded, "readers see it in the clear");
    // a file, or every file of a directory (the Raft log's segments)
    let grep = |path: &Path| -> bool {
        let files: Vec<std::path::PathBuf> = if path.is_dir() {
            std::fs::read_dir(path)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect()
        } else {
            vec![path.to_path_buf()]
        };
        assert!(!files.is_empty(), "{} holds no file", path.display());
        files.iter().any(|f| {
            let bytes = std::fs::read(f).unwrap();
            let has = |needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
            has(&plain) || has(&encoded)
        })
    };
    let snap = s.dir.join("snap.json");
    let save = |s: &Server| {
        ok(&wk(&[
            "snapshot",
            "save",
            snap.to_str().unwrap(),
            "--kubeconfig",
            s.kubeconfig().to_str().unwrap(),
        ]));
    };
    save(&s);
    let snapshot = std::fs::read_to_string(&snap).unwrap();
    assert!(
        snapshot.contains("k8s:enc:xchacha20poly1305:v1:"),
        "sealed in the snapshot"
    );
    for f in ["raft/wal", "raft/state.redb", "snap.json"] {
        assert!(!grep(&s.dir.join(f)), "{f} holds the secret in the clear");
    }

    // rotation: a new key seals everything, the old one is retired
    let status = ok(&wk(&[
        "secrets-encrypt",
        "status",
        "--kubeconfig",
        s.kubeconfig().to_str().unwrap(),
    ]));
    assert!(status.contains("Encryption Status: Enabled"), "{status}");
    let before = std::fs::read_to_string(s.dir.join("cred/encryption-config.json")).unwrap();
    let rotated = ok(&wk(&[
        "secrets-encrypt",
        "rotate-keys",
        "--kubeconfig",
        s.kubeconfig().to_str().unwrap(),
    ]));
    assert!(rotated.contains("Rotated to key"), "{rotated}");
    let active = rotated
        .lines()
        .find_map(|l| l.strip_prefix("Active Key: "))
        .unwrap()
        .to_string();
    let by_key: Vec<&str> = rotated.lines().filter(|l| l.starts_with("  ")).collect();
    assert!(
        by_key
            .iter()
            .all(|l| l.trim().starts_with(&format!("{active}:"))),
        "every Secret under the new key: {rotated}"
    );
    let after = std::fs::read_to_string(s.dir.join("cred/encryption-config.json")).unwrap();
    assert_ne!(before, after);
    assert_eq!(
        after.matches("\"name\"").count(),
        1,
        "the old key is retired: {after}"
    );
    save(&s);
    assert!(std::fs::read_to_string(&snap)
        .unwrap()
        .contains(&format!("v1:{active}:")));
    for f in ["raft/wal", "raft/state.redb", "snap.json"] {
        assert!(
            !grep(&s.dir.join(f)),
            "{f} holds the secret in the clear after rotation"
        );
    }
    // a restart opens everything with the keys on disk
    s.restart().await;
    assert_eq!(
        ok(&s.kubectl(&["get", "secret", "db", "-o", "jsonpath={.data.password}"])),
        encoded
    );
    // a restored copy, with the key carried over, decrypts it too
    let restored = s.dir.join("restored");
    std::fs::create_dir_all(restored.join("cred")).unwrap();
    std::fs::copy(
        s.dir.join("cred/encryption-config.json"),
        restored.join("cred/encryption-config.json"),
    )
    .unwrap();
    ok(&wk(&[
        "snapshot",
        "restore",
        snap.to_str().unwrap(),
        "--data-dir",
        restored.to_str().unwrap(),
    ]));
    let r = Server::builder()
        .data_dir(&restored)
        .arg("--disable-agent")
        .start()
        .await;
    let (_, got) = r
        .call(Method::GET, "/api/v1/namespaces/default/secrets/db", None)
        .await;
    assert_eq!(got["data"]["password"], encoded.as_str());
}

#[tokio::test]
async fn the_audit_log_says_who_did_what_and_what_came_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let s = Server::builder()
        .arg("--audit-log-path")
        .arg(log.to_str().unwrap())
        .start()
        .await;
    ok(&s.kubectl(&["get", "pods", "-n", "kube-system"]));
    let jane = s.user_kubeconfig("jane", &[]);
    fails(&kubectl(&jane, &["get", "secrets", "-n", "default"]));
    let r = s
        .anonymous()
        .get(format!("{}/api/v1/nodes", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let events = eventually(10, "the events are written", || async {
        let text = std::fs::read_to_string(&log).ok()?;
        let events: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let seen = |user: &str, code: u64| {
            events
                .iter()
                .any(|e| e["user"]["username"] == user && e["responseStatus"]["code"] == code)
        };
        (seen("system:admin", 200) && seen("jane", 403) && seen("system:anonymous", 401))
            .then_some(events)
    })
    .await;
    let list = events
        .iter()
        .find(|e| e["user"]["username"] == "system:admin" && e["objectRef"]["resource"] == "pods")
        .unwrap();
    assert_eq!(list["apiVersion"], "audit.k8s.io/v1");
    assert_eq!(list["kind"], "Event");
    assert_eq!(list["level"], "Metadata");
    assert_eq!(list["verb"], "list");
    assert_eq!(list["objectRef"]["namespace"], "kube-system");
    assert_eq!(list["sourceIPs"][0], "127.0.0.1");
    assert!(
        list["userAgent"].as_str().unwrap().starts_with("kubectl"),
        "{list}"
    );
    assert!(list["requestReceivedTimestamp"].is_string() && list["stageTimestamp"].is_string());
    let denied = events
        .iter()
        .find(|e| e["user"]["username"] == "jane" && e["responseStatus"]["code"] == 403)
        .unwrap();
    assert_eq!(
        denied["annotations"]["authorization.k8s.io/decision"],
        "forbid"
    );
    assert_eq!(denied["objectRef"]["resource"], "secrets");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&log).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[tokio::test]
async fn bad_handshakes_and_foreign_certificates_do_not_get_in_or_stop_good_clients() {
    let s = Server::start().await;
    let addr = s.url.trim_start_matches("https://").to_string();
    // a burst of garbage and of handshakes that never finish
    let mut idle = Vec::new();
    for i in 0..300 {
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        if i % 2 == 0 {
            use tokio::io::AsyncWriteExt;
            let _ = c
                .write_all(b"\x16\x03\x01\x02\x00garbage that is not a ClientHello")
                .await;
        }
        idle.push(c);
    }
    // good clients are served meanwhile, promptly
    for _ in 0..20 {
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            s.http.get(format!("{}/api/v1/namespaces", s.url)).send(),
        )
        .await
        .expect("served while bad connections are open")
        .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    drop(idle);
    // a client certificate from another CA fails the handshake
    let other = tempfile::tempdir().unwrap();
    let foreign_ca = wasmkube::tls::Ca::load_or_create(other.path(), "ca", "evil").unwrap();
    let forged = foreign_ca
        .issue(
            &wasmkube::tls::LeafSpec::client("system:admin", &["system:masters"]),
            Duration::from_secs(3600),
        )
        .unwrap();
    let http = wasmkube::tls::http_client(&s.ca(), Some(&forged)).unwrap();
    let r = http.get(format!("{}/api/v1/secrets", s.url)).send().await;
    assert!(r.is_err(), "a certificate of another CA is refused: {r:?}");
    // a server that is not ours is refused by our clients
    let wrong_ca = wasmkube::tls::http_client(&foreign_ca.cert_pem, None).unwrap();
    assert!(wrong_ca
        .get(format!("{}/version", s.url))
        .send()
        .await
        .is_err());
    // the Raft endpoints take only the servers' peer identity
    let (code, _) = s.call(Method::POST, "/raft/vote", Some(json!({}))).await;
    assert_eq!(code, 403, "not even cluster-admin");
    let peer = wasmkube::tls::KeyPairPem {
        cert: std::fs::read_to_string(s.dir.join("tls/client-wk-server.crt")).unwrap(),
        key: std::fs::read_to_string(s.dir.join("tls/client-wk-server.key")).unwrap(),
    };
    let r = wasmkube::tls::http_client(&s.ca(), Some(&peer))
        .unwrap()
        .post(format!("{}/raft/vote", s.url))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_ne!(
        r.status().as_u16(),
        403,
        "a peer is let in (the body is not a vote)"
    );
    assert_ne!(r.status().as_u16(), 401);
}

#[tokio::test]
async fn kube_rs_and_the_python_client_work_as_admin_viewer_and_service_account() {
    use k8s_openapi::api::core::v1::{ConfigMap, Pod};
    use kube::api::{Api, ListParams, PostParams};
    let s = Server::start().await;
    namespace(&s, "team").await;
    let jane = s.user_kubeconfig("jane", &[]);
    ok(&s.kubectl(&[
        "create",
        "rolebinding",
        "jane-view",
        "--clusterrole=view",
        "--user=jane",
        "-n",
        "team",
    ]));
    let client = |path: &Path| {
        let kc = kube::config::Kubeconfig::read_from(path).unwrap();
        async move {
            let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .unwrap();
            kube::Client::try_from(config).unwrap()
        }
    };
    // kube-rs as admin, as a viewer, and with a ServiceAccount token
    let admin = client(&s.kubeconfig()).await;
    let cms: Api<ConfigMap> = Api::namespaced(admin, "team");
    let cm =
        serde_json::from_value(json!({"metadata": {"name": "from-kube-rs"}, "data": {"a": "1"}}))
            .unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let viewer: Api<Pod> = Api::namespaced(client(&jane).await, "team");
    viewer.list(&ListParams::default()).await.unwrap();
    let viewer_cms: Api<ConfigMap> = Api::namespaced(client(&jane).await, "team");
    let e = viewer_cms
        .delete("from-kube-rs", &Default::default())
        .await
        .unwrap_err();
    assert!(matches!(&e, kube::Error::Api(s) if s.code == 403), "{e}");
    let token = create_token(&s, "team", "default", &[]);
    let sa_kc = s.token_kubeconfig("sa", &token);
    let sa: Api<Pod> = Api::namespaced(client(&sa_kc).await, "team");
    let e = sa.list(&ListParams::default()).await.unwrap_err();
    assert!(matches!(&e, kube::Error::Api(s) if s.code == 403), "{e}");

    // the official Python client, from the same kubeconfigs
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/python/client_smoke.py");
    let py = |kc: &Path, role: &str| {
        std::process::Command::new("python3")
            .arg(&script)
            .arg(kc)
            .arg(role)
            .output()
            .expect("python3")
    };
    let out = py(&s.kubeconfig(), "admin");
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    for want in [
        "namespaces: ",
        "created python-cm",
        "patched python-cm",
        "watched ADDED python-cm",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    let out = py(&s.kubeconfig(), "workloads");
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    for want in [
        "strategic patch kept main,side",
        "applied py-ssa as python",
        "custom object g1 size 5",
        "watched ADDED g1",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    let out = py(&jane, "viewer");
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("create refused: 403"),
        "{}",
        stdout(&out)
    );
    let out = py(&sa_kc, "serviceaccount");
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("list refused: 403"),
        "{}",
        stdout(&out)
    );
}
