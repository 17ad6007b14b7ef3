//! Test fixtures: real `wk server` processes on free loopback ports with fresh
//! data directories, driven over HTTP, with kube-rs, or with the real `wkctl`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;
use wasmkube::client::{Client, Kubeconfig};

pub const WK: &str = env!("CARGO_BIN_EXE_wk");
pub const WKCTL: &str = env!("CARGO_BIN_EXE_wkctl");

/// A running `wk server`.
pub struct Server {
    child: Option<Child>,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub url: String,
    /// An HTTPS client with the admin identity of the kubeconfig.
    pub http: reqwest::Client,
    /// The server's join token (`DATA_DIR/token`).
    pub join_token: String,
    args: Vec<String>,
    /// A soft open-file limit to start the process with.
    open_files: Option<u64>,
}

/// Configures a server before it starts.
#[derive(Default)]
pub struct ServerBuilder {
    args: Vec<String>,
    dir: Option<PathBuf>,
    open_files: Option<u64>,
}

impl ServerBuilder {
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_string());
        self
    }

    /// Start the server with this soft limit on open files (the hard limit
    /// stays), as a shell or service manager would give it.
    pub fn open_files(mut self, soft: u64) -> Self {
        self.open_files = Some(soft);
        self
    }

    /// Use an existing data directory (restored snapshots, restarts).
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.dir = Some(dir.to_path_buf());
        self
    }

    pub async fn start(mut self) -> Server {
        // Clusters of parallel tests share the machine's 127.0.0.0/8: give
        // each its own Service and pod ranges, so their proxies and pods
        // never listen on the same address.
        if !self.args.iter().any(|a| a == "--service-cidr") {
            let r: u32 = rand::random_range(0..512);
            let base = std::net::Ipv4Addr::new(127, 32, 0, 0).to_bits() + (r << 12);
            self.args.push("--service-cidr".into());
            self.args
                .push(format!("{}/20", std::net::Ipv4Addr::from_bits(base)));
        }
        for flag in ["--ingress-listen", "--ingress-tls-listen"] {
            if !self.args.iter().any(|a| a == flag) {
                self.args
                    .extend([flag.to_string(), "127.0.0.1:0".to_string()]);
            }
        }
        if !self.args.iter().any(|a| a == "--cluster-cidr") {
            let r: u32 = rand::random_range(0..256);
            let base = std::net::Ipv4Addr::new(127, 64, 0, 0).to_bits() + (r << 14);
            self.args.push("--cluster-cidr".into());
            self.args
                .push(format!("{}/18", std::net::Ipv4Addr::from_bits(base)));
            self.args
                .extend(["--node-cidr-mask-size".into(), "22".into()]);
        }
        // the tests' HTTP clients use the process's rustls provider (ring)
        wasmkube::tls::install_default_provider();
        let (dir, tmp) = match self.dir {
            Some(d) => (d, None),
            None => {
                let t = tempfile::tempdir().expect("tempdir");
                (t.path().to_path_buf(), Some(t))
            }
        };
        let mut s = Server {
            child: None,
            dir,
            _tmp: tmp,
            url: String::new(),
            http: reqwest::Client::new(),
            join_token: String::new(),
            args: self.args,
            open_files: self.open_files,
        };
        s.spawn().await;
        s
    }
}

impl Server {
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    pub async fn start() -> Server {
        Self::builder().start().await
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig.yaml")
    }

    async fn spawn(&mut self) {
        std::fs::create_dir_all(&self.dir).unwrap();
        let _ = std::fs::remove_file(self.kubeconfig());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .unwrap();
        let listen: &[&str] = if self.args.iter().any(|a| a == "--listen") {
            &[]
        } else {
            &["--listen", "127.0.0.1:0"]
        };
        let mut cmd = Command::new(WK);
        if let Some(soft) = self.open_files {
            use std::os::unix::process::CommandExt;
            // SAFETY: only async-signal-safe calls between fork and exec
            unsafe {
                cmd.pre_exec(move || {
                    let mut lim = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    lim.rlim_cur = soft.min(lim.rlim_max);
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .args(["server", "--data-dir"])
            .arg(&self.dir)
            .args(listen)
            .args(&self.args)
            .env(
                "WK_LOG",
                std::env::var("WK_TEST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start wk server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        let kc = loop {
            if let Ok(kc) = Kubeconfig::load(&self.kubeconfig()) {
                break kc;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("wk server exited with {status}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "wk server did not start: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        self.url = kc.server.clone();
        self.http = wasmkube::tls::http_client(
            kc.ca.as_deref().expect("kubeconfig CA"),
            kc.client_cert.as_ref(),
        )
        .expect("admin client");
        self.join_token = std::fs::read_to_string(self.dir.join("token"))
            .expect("join token")
            .trim()
            .to_string();
        loop {
            if let Ok(r) = self.http.get(format!("{}/readyz", self.url)).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "wk server never became ready: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // as in any Kubernetes cluster, every namespace soon has the CA
        // bundle pods mount: tests that list ConfigMaps see it from the start
        loop {
            let (code, _) = self
                .call(
                    Method::GET,
                    "/api/v1/namespaces/default/configmaps/kube-root-ca.crt",
                    None,
                )
                .await;
            if code == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "kube-root-ca.crt never appeared: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// The exit status, once the process has exited by itself.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill -9");
            c.wait().expect("reap");
        }
    }

    /// SIGTERM and wait for a clean exit; returns whether it exited with 0.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Start again on the same data directory (the port changes).
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    /// The cluster CA the kubeconfig carries.
    pub fn ca(&self) -> String {
        Kubeconfig::load(&self.kubeconfig())
            .expect("kubeconfig")
            .ca
            .expect("kubeconfig CA")
    }

    /// An HTTPS client that trusts the cluster CA but presents no identity.
    pub fn anonymous(&self) -> reqwest::Client {
        wasmkube::tls::http_client(&self.ca(), None).expect("client")
    }

    /// A client with the admin identity of the kubeconfig as written.
    pub fn client(&self) -> Client {
        Client::from_kubeconfig(&self.kubeconfig()).expect("admin client")
    }

    /// Raw request; returns the status code and the JSON body.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_as(method, path, body, "application/json").await
    }

    pub async fn call_as(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        content_type: &str,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(b) = body {
            req = req.header("content-type", content_type).body(b.to_string());
        }
        let resp = req.send().await.expect("request");
        let code = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            code,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Raw request with a raw body; returns the status code and the body text.
    pub async fn call_raw(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, String) {
        let resp = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.url))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request");
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// The name of the first registered node (waiting for one to register).
    pub async fn node_name(&self) -> String {
        eventually(30, "a node registers", || async {
            let (_, nodes) = self.call(Method::GET, "/api/v1/nodes", None).await;
            nodes["items"]
                .as_array()
                .and_then(|a| a.first())
                .and_then(|n| n["metadata"]["name"].as_str())
                .map(String::from)
        })
        .await
    }

    /// Poll pod `name` in `default` until `pred` holds (at most 60 s).
    pub async fn wait_pod(&self, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        eventually(60, what, || async {
            let (code, p) = self
                .call(
                    Method::GET,
                    &format!("/api/v1/namespaces/default/pods/{name}"),
                    None,
                )
                .await;
            (code == 200 && pred(&p)).then_some(p)
        })
        .await
    }

    /// Run the real wkctl against this server.
    pub fn wkctl(&self, args: &[&str]) -> Output {
        self.wkctl_stdin(args, None)
    }

    pub fn wkctl_stdin(&self, args: &[&str], input: Option<&str>) -> Output {
        use std::io::Write;
        let mut child = Command::new(WKCTL)
            .args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run wkctl");
        let mut stdin = child.stdin.take().unwrap();
        if let Some(i) = input {
            stdin.write_all(i.as_bytes()).unwrap();
        }
        drop(stdin);
        child.wait_with_output().unwrap()
    }
}

/// A `wk agent` process joined to a server.
pub struct AgentProc {
    child: Option<Child>,
    pub name: String,
    pub dir: tempfile::TempDir,
    server_url: String,
    token: String,
    extra: Vec<String>,
}

impl AgentProc {
    pub fn start(server: &Server, name: &str) -> AgentProc {
        Self::start_with(server, name, &[])
    }

    /// Start an agent with extra `wk agent` flags.
    pub fn start_with(server: &Server, name: &str, extra: &[&str]) -> AgentProc {
        let dir = tempfile::tempdir().unwrap();
        let mut a = AgentProc {
            child: None,
            name: name.into(),
            dir,
            server_url: server.url.clone(),
            token: server.join_token.clone(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        a.spawn();
        a
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .unwrap();
        self.child = Some(
            Command::new(WK)
                .args([
                    "agent",
                    "--server",
                    &self.server_url,
                    "--node-name",
                    &self.name,
                ])
                // the server's own join token unless the test gives one
                .args(
                    (!self.extra.iter().any(|e| e == "--token"))
                        .then_some(["--token", self.token.as_str()])
                        .into_iter()
                        .flatten(),
                )
                .arg("--data-dir")
                .arg(self.dir.path().join("data"))
                .args(["--backoff-base-ms", "200", "--heartbeat-ms", "500"])
                .args(
                    ["--listen", "--ingress-listen", "--ingress-tls-listen"]
                        .into_iter()
                        .filter(|f| !self.extra.iter().any(|e| e == f))
                        .flat_map(|f| [f, "127.0.0.1:0"]),
                )
                .args(&self.extra)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start wk agent"),
        );
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill9();
        cleanup_containers(self.dir.path());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- the server's log, last lines ---");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
            // bounded: a test may fail because the cluster hangs
            let events = self.kubectl(&[
                "get",
                "events",
                "-A",
                "--sort-by=.lastTimestamp",
                "--request-timeout=10s",
            ]);
            eprintln!(
                "--- events ---\n{}",
                String::from_utf8_lossy(&events.stdout)
            );
        }
        self.kill9();
        // WK_TEST_KEEP_LOGS=DIR keeps every server's whole log for debugging
        if let Ok(keep) = std::env::var("WK_TEST_KEEP_LOGS") {
            let name = self.url.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
            let _ = std::fs::create_dir_all(&keep);
            let _ = std::fs::copy(
                self.dir.join("server.log"),
                Path::new(&keep).join(format!("{name}.log")),
            );
        }
        cleanup_containers(&self.dir);
    }
}

/// Linux containers outlive their agent by design (their shims hold
/// them): end those a test's node started, and undo its mounts (container
/// roots, pinned network namespaces), so nothing stays behind the test.
pub fn cleanup_containers(dir: &Path) {
    for root in [dir.join("agent/oci/runc"), dir.join("data/oci/runc")] {
        if !root.exists() {
            continue;
        }
        let ids = Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["list", "-q"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for id in ids.lines().filter(|l| !l.is_empty()) {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(&root)
                .args(["delete", "--force", id])
                .stderr(Stdio::null())
                .status();
        }
    }
    let prefix = dir.display().to_string();
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    points.reverse();
    for m in points {
        let c = std::ffi::CString::new(m).unwrap();
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Run the `wk` binary (snapshot commands) to completion.
pub fn wk(args: &[&str]) -> Output {
    Command::new(WK).args(args).output().expect("run wk")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A loopback port that was free a moment ago.
/// Copy a server's keys and identity (`cred/` to decrypt Secrets, `tls/`
/// to keep the cluster's identity) into the data directory `to`, as
/// docs/security.md says to carry them with a snapshot.
pub fn copy_cluster_keys(from: &Path, to: &Path) {
    for sub in ["cred", "tls"] {
        std::fs::create_dir_all(to.join(sub)).unwrap();
        for f in std::fs::read_dir(from.join(sub)).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), to.join(sub).join(f.file_name())).unwrap();
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A ConfigMap manifest.
pub fn configmap(name: &str, value: &str) -> Value {
    serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"v": value}})
}

/// Poll `f` until it returns Some, for at most `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `file://` image of an example guest built for `target`
/// (`wasm32-wasip1` or `wasm32-wasip2`) by `bash tests/run.sh`.
pub fn example_image(target: &str, name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("examples/target/{target}/release/{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: `bash tests/run.sh` builds the examples",
        path.display()
    );
    format!("file://{}", path.display())
}

/// Run the real kubectl with `KUBECONFIG` set, as a user would.
pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> Output {
    kubectl_stdin(kubeconfig, args, None)
}

pub fn kubectl_stdin(kubeconfig: &Path, args: &[&str], input: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", kubeconfig.parent().unwrap_or(Path::new("/tmp")))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl is installed on these machines");
    let mut stdin = child.stdin.take().unwrap();
    if let Some(i) = input {
        stdin.write_all(i.as_bytes()).unwrap();
    }
    drop(stdin);
    child.wait_with_output().unwrap()
}

impl Server {
    /// kubectl with the kubeconfig the server wrote.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        kubectl(&self.kubeconfig(), args)
    }

    /// A kubeconfig for a new user: a client certificate signed with the
    /// cluster's client CA (what an administrator does with the CA key),
    /// CN `user`, O `groups`.
    pub fn user_kubeconfig(&self, user: &str, groups: &[&str]) -> PathBuf {
        let tls = self.dir.join("tls");
        let ca = wasmkube::tls::Ca::load_or_create(&tls, "client-ca", "unused").unwrap();
        let pair = ca
            .issue(
                &wasmkube::tls::LeafSpec::client(user, groups),
                Duration::from_secs(3600),
            )
            .unwrap();
        let kc = Kubeconfig {
            server: self.url.clone(),
            ca: Some(self.ca()),
            client_cert: Some(pair),
            ..Default::default()
        };
        let dir = self.dir.join("users");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{}.yaml", user.replace(':', "_")));
        kc.write(&path).unwrap();
        path
    }

    /// A kubeconfig that authenticates with a bearer token.
    pub fn token_kubeconfig(&self, name: &str, token: &str) -> PathBuf {
        let kc = Kubeconfig {
            server: self.url.clone(),
            ca: Some(self.ca()),
            token: Some(token.to_string()),
            ..Default::default()
        };
        let dir = self.dir.join("users");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.yaml"));
        kc.write(&path).unwrap();
        path
    }

    /// An HTTPS client for a kubeconfig (its certificate or token).
    pub fn http_for(&self, kubeconfig: &Path) -> reqwest::Client {
        let kc = Kubeconfig::load(kubeconfig).unwrap();
        let mut b = reqwest::Client::builder().use_preconfigured_tls(
            wasmkube::tls::client_config(kc.ca.as_deref().unwrap(), kc.client_cert.as_ref())
                .unwrap(),
        );
        if let Some(t) = kc.token {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {t}").parse().unwrap(),
            );
            b = b.default_headers(h);
        }
        b.build().unwrap()
    }
}
