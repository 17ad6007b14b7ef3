//! `wk-bench`: store benchmarks for wasmkube with etcd as the reference.
//!
//! Starts a `wk server` and an `etcd` on loopback with fresh data dirs, then
//! measures, for each, create and update throughput and p50/p99 latency at
//! several client concurrencies, and watch delivery latency with many
//! watchers. Both fsync every commit, and both are reached over TLS with a
//! client certificate (one HTTP/2 connection per server, shared by the
//! clients). Prints a Markdown report.
//!
//! ```text
//! cargo build --release && target/release/wk-bench store --wk target/release/wk
//! target/release/wk-bench pods --wk target/release/wk   # after building the examples
//! target/release/wk-bench http --wk target/release/wk --wasmtime /path/to/wasmtime
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use base64::Engine;
use clap::Parser;
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(about = "wasmkube benchmarks")]
enum Bench {
    /// The store (create/update throughput, latency, watch delivery) against etcd.
    Store(Args),
    /// Wasm pods: apply → Running latency (cold and warm) and idle density.
    Pods(pods::PodArgs),
    /// The Wasm runtime alone: instantiate-and-run time of one container or exec.
    Instantiate(instantiate::InstArgs),
    /// HTTP functions: through the Ingress, the Service and the pod address,
    /// against `wasmtime serve`; activation latency from zero.
    Http(http::HttpArgs),
    /// Lists of pods as JSON, protobuf and server-side Tables: latency and size.
    Lists(lists::ListArgs),
    /// Linux (runc) pods beside Wasm pods: apply → Running, mixed pods,
    /// image import, idle footprint.
    Oci(pods::OciArgs),
    /// HA: three servers; kill -9 the leader, time until a survivor
    /// accepts a write again.
    Failover(FailoverArgs),
    /// HA under faults: kill -9 and SIGSTOP servers while clients write and
    /// read; check every key's history for linearizability.
    Chaos(chaos::ChaosArgs),
    /// Flash wear: bytes written to disk idle and per pod, by the server
    /// and by an agent.
    Wear(wear::WearArgs),
    /// The control plane at many nodes: hollow nodes that hold Leases and
    /// heartbeat, then pods scheduled through the API.
    Hollow(hollow::HollowArgs),
    /// The scheduler's decision alone, in this process: pods placed one
    /// by one on nodes like the hollow ones, without the API.
    Schedule(schedule::ScheduleArgs),
}

#[derive(Parser)]
struct FailoverArgs {
    /// The wk binary to benchmark.
    #[arg(long, default_value = "target/release/wk")]
    wk: PathBuf,
    /// Leader kills (a fresh three-server cluster each).
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Extra `wk server` flags for every server (e.g. Raft timing).
    #[arg(long, allow_hyphen_values = true)]
    server_flag: Vec<String>,
}

#[derive(Parser)]
struct Args {
    /// The wk binary to benchmark.
    #[arg(long, default_value = "target/release/wk")]
    wk: PathBuf,
    /// The etcd binary for the reference run ("none" to skip).
    #[arg(long, default_value = "etcd")]
    etcd: String,
    /// Client concurrencies.
    #[arg(long, default_value = "1,16,100", value_delimiter = ',')]
    clients: Vec<usize>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Bytes of payload per object.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Concurrent watchers for the delivery-latency run.
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// Writes observed by the watchers.
    #[arg(long, default_value_t = 200)]
    watch_events: usize,
    /// Servers (wasmkube) and members (etcd) per cluster: 1, 3 or 5. With
    /// more than one, client `i` talks to server `i mod N`, as clients
    /// spread over a cluster do.
    #[arg(long, default_value_t = 1)]
    servers: usize,
    /// Give every client a connection of its own. By default the clients
    /// of one server share one HTTP/2 connection, as client-go's clients
    /// do towards an API server and the API server's to etcd.
    #[arg(long)]
    connection_per_client: bool,
}

/// A system under test.
#[derive(Clone)]
enum Target {
    Wk {
        url: String,
        http: reqwest::Client,
        tls: Arc<Tls>,
    },
    Etcd {
        url: String,
        http: reqwest::Client,
        tls: Arc<Tls>,
    },
}

/// What a client needs to open its own connection to a target.
struct Tls {
    ca: String,
    identity: Option<wasmkube::tls::KeyPairPem>,
}

impl Tls {
    fn client(&self) -> Result<reqwest::Client> {
        Ok(wasmkube::tls::http_client(
            &self.ca,
            self.identity.as_ref(),
        )?)
    }
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn object(name: &str, value: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"}, "data": {"v": value}})
}

impl Target {
    /// This target over a connection of its own.
    fn reconnect(&self) -> Result<Target> {
        Ok(match self {
            Target::Wk { url, tls, .. } => Target::Wk {
                url: url.clone(),
                http: tls.client()?,
                tls: tls.clone(),
            },
            Target::Etcd { url, tls, .. } => Target::Etcd {
                url: url.clone(),
                http: tls.client()?,
                tls: tls.clone(),
            },
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Target::Wk { .. } => "wasmkube",
            Target::Etcd { .. } => "etcd",
        }
    }

    async fn write(&self, prefix: &str, name: &str, value: &str, update: bool) -> Result<()> {
        let resp = match self {
            Target::Wk { url, http, .. } => {
                let base = format!("{url}/api/v1/namespaces/default/configmaps");
                let mut obj = object(&format!("{prefix}{name}"), value);
                if update {
                    obj["metadata"]["resourceVersion"] = Value::Null;
                    http.put(format!("{base}/{prefix}{name}"))
                        .json(&obj)
                        .send()
                        .await?
                } else {
                    http.post(base).json(&obj).send().await?
                }
            }
            Target::Etcd { url, http, .. } => {
                let key = format!("/registry/configmaps/default/{prefix}{name}");
                let val = object(&format!("{prefix}{name}"), value).to_string();
                http.post(format!("{url}/v3/kv/put"))
                    .json(&json!({"key": b64(&key), "value": b64(&val)}))
                    .send()
                    .await?
            }
        };
        if !resp.status().is_success() {
            bail!(
                "{} write failed: {} {}",
                self.name(),
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
        }
        // read the answer, as a client does: a body left unread resets its
        // HTTP/2 stream, and the server's frames still in flight for it then
        // count as errors until h2 closes the connection
        // (`too_many_internal_resets`)
        resp.bytes().await?;
        Ok(())
    }

    /// Open a watch on `prefix` objects; yields each payload value received.
    async fn watch(&self, prefix: &str) -> Result<reqwest::Response> {
        let resp = match self {
            Target::Wk { url, http, .. } => {
                open_watch(http, url, "/api/v1/namespaces/default/configmaps").await?
            }
            Target::Etcd { url, http, .. } => {
                let key = format!("/registry/configmaps/default/{prefix}");
                let mut end = key.clone().into_bytes();
                *end.last_mut().expect("non-empty") += 1;
                let end = String::from_utf8(end)?;
                http.post(format!("{url}/v3/watch"))
                    .json(&json!({"create_request": {"key": b64(&key), "range_end": b64(&end)}}))
                    .send()
                    .await?
            }
        };
        if !resp.status().is_success() {
            bail!("{} watch failed: {}", self.name(), resp.status());
        }
        Ok(resp)
    }

    /// The payload values in one parsed watch message.
    fn values(&self, msg: &Value) -> Vec<String> {
        match self {
            Target::Wk { .. } => msg["object"]["data"]["v"]
                .as_str()
                .map(String::from)
                .into_iter()
                .collect(),
            Target::Etcd { .. } => msg["result"]["events"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["kv"]["value"].as_str())
                .filter_map(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
                .filter_map(|v| serde_json::from_slice::<Value>(&v).ok())
                .filter_map(|o| o["data"]["v"].as_str().map(String::from))
                .collect(),
        }
    }
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

fn payload(size: usize, stamp: u128) -> String {
    let mut s = format!("t{stamp}x");
    while s.len() < size {
        s.push('a');
    }
    s
}

struct Measurement {
    ops: u64,
    elapsed: Duration,
    hist: Histogram<u64>,
}

async fn run_writes(
    targets: &[Target],
    clients: usize,
    seconds: f64,
    size: usize,
    update: bool,
    prefix: &str,
    connection_per_client: bool,
) -> Result<Measurement> {
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let target = &targets[c % targets.len()];
        let target = if connection_per_client {
            target.reconnect()?
        } else {
            target.clone()
        };
        let stop = stop.clone();
        let total = total.clone();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).expect("histogram");
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // updates cycle over the objects this client created
                let name = if update {
                    format!("c{c}-{}", i % 64)
                } else {
                    format!("c{c}-{i}")
                };
                let t = Instant::now();
                // every write carries a new value, so no update is a no-op
                target
                    .write(&prefix, &name, &payload(size, i as u128 + 1), update)
                    .await?;
                hist.record(t.elapsed().as_micros() as u64).ok();
                i += 1;
                total.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(hist)
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut hist = Histogram::<u64>::new(3)?;
    for t in tasks {
        hist.add(t.await??)?;
    }
    Ok(Measurement {
        ops: total.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
        hist,
    })
}

async fn run_watch(
    target: &Target,
    watchers: usize,
    events: usize,
    size: usize,
) -> Result<Histogram<u64>> {
    let prefix = "watch-";
    let mut tasks = Vec::new();
    for _ in 0..watchers {
        let resp = target.watch(prefix).await?;
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).expect("histogram");
            let mut stream = resp.bytes_stream();
            let mut buf = Vec::new();
            let mut seen = 0;
            while seen < events {
                let Ok(Some(chunk)) =
                    tokio::time::timeout(Duration::from_secs(30), stream.next()).await
                else {
                    break;
                };
                buf.extend_from_slice(&chunk?);
                let mut de = serde_json::Deserializer::from_slice(&buf).into_iter::<Value>();
                let mut consumed = 0;
                while let Some(Ok(msg)) = de.next() {
                    consumed = de.byte_offset();
                    for v in target.values(&msg) {
                        if let Some(stamp) = v
                            .strip_prefix('t')
                            .and_then(|r| r.split('x').next())
                            .and_then(|n| n.parse::<u128>().ok())
                        {
                            hist.record(((now_nanos() - stamp) / 1000) as u64).ok();
                            seen += 1;
                        }
                    }
                }
                buf.drain(..consumed);
            }
            anyhow::Ok(hist)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..events {
        target
            .write(prefix, &format!("{i}"), &payload(size, now_nanos()), false)
            .await?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut hist = Histogram::<u64>::new(3)?;
    for t in tasks {
        hist.add(t.await??)?;
    }
    Ok(hist)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_wk(bin: &Path, dir: &Path, extra: &[&str]) -> Result<(Proc, Target)> {
    let child = Command::new(bin)
        .args(["server", "--data-dir"])
        .arg(dir)
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .env("WK_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let proc = Proc(child);
    for _ in 0..600 {
        if let Ok(kc) = wasmkube::client::Kubeconfig::load(&dir.join("kubeconfig.yaml")) {
            let tls = Arc::new(Tls {
                ca: kc.ca.clone().context("kubeconfig without a CA")?,
                identity: kc.client_cert.clone(),
            });
            let http = tls.client()?;
            if http
                .get(format!("{}/readyz", kc.server))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok((
                    proc,
                    Target::Wk {
                        url: kc.server,
                        http,
                        tls,
                    },
                ));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("wk server did not start")
}

/// Start `wk agent` as node `name` in `dir` against the server at `url`,
/// with the server's token (its `token` file), no Ingress listeners and
/// `extra` flags.
fn start_agent(
    bin: &Path,
    url: &str,
    token: &Path,
    name: &str,
    dir: &Path,
    extra: &[&str],
) -> Result<Proc> {
    let token = std::fs::read_to_string(token)?;
    let child = Command::new(bin)
        .args(["agent", "--server", url, "--token", token.trim()])
        .args(["--node-name", name, "--data-dir"])
        .arg(dir)
        .args(["--listen", "127.0.0.1:0"])
        .args(["--ingress-listen", "off", "--ingress-tls-listen", "off"])
        .args(extra)
        .env("WK_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {} agent", bin.display()))?;
    Ok(Proc(child))
}

/// Watch `path` on the server at `url` from now: the version of a one-item
/// list (the store's current revision), then a watch from it.
async fn open_watch(http: &reqwest::Client, url: &str, path: &str) -> Result<reqwest::Response> {
    let list: Value = http
        .get(format!("{url}{path}?limit=1"))
        .send()
        .await?
        .json()
        .await?;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_string();
    Ok(http
        .get(format!("{url}{path}?watch=true&resourceVersion={rv}"))
        .send()
        .await?)
}

/// Watch `path` on the server at `url` from now, in a task that calls
/// `on_object` with each event's object.
async fn watch_objects(
    http: &reqwest::Client,
    url: &str,
    path: &str,
    mut on_object: impl FnMut(&Value) + Send + 'static,
) -> Result<()> {
    let resp = open_watch(http, url, path).await?;
    tokio::spawn(async move {
        let mut stream = resp.bytes_stream();
        let mut buf = Vec::new();
        while let Some(Ok(chunk)) = stream.next().await {
            buf.extend_from_slice(&chunk);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                if let Ok(ev) = serde_json::from_slice::<Value>(&line) {
                    on_object(&ev["object"]);
                }
            }
        }
    });
    Ok(())
}

/// `GET /wk/v1/cluster/members` on the server at `url`.
async fn members(http: &reqwest::Client, url: &str) -> Result<Value> {
    Ok(http
        .get(format!("{url}/wk/v1/cluster/members"))
        .send()
        .await?
        .json()
        .await?)
}

/// A wasmkube cluster of `n` servers: the first bootstraps, the others
/// join it with its token. Waits until all are voters.
async fn start_wk_cluster(
    bin: &Path,
    dir: &Path,
    n: usize,
    extra: &[&str],
) -> Result<(Vec<Proc>, Vec<Target>)> {
    let (first_proc, first) = start_wk(bin, &dir.join("s0"), extra).await?;
    let Target::Wk { url, http, .. } = first.clone() else {
        bail!("not a wk target")
    };
    let token = std::fs::read_to_string(dir.join("s0/token"))?;
    let mut joined: Vec<&str> = extra.to_vec();
    joined.extend(["--join", url.as_str(), "--token", token.trim()]);
    let (mut procs, mut targets) = (vec![first_proc], vec![first]);
    for i in 1..n {
        let (p, t) = start_wk(bin, &dir.join(format!("s{i}")), &joined).await?;
        procs.push(p);
        targets.push(t);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let m = members(&http, &url).await?;
        let members = m["members"].as_array().cloned().unwrap_or_default();
        if members.iter().filter(|x| x["role"] == "voter").count() == n {
            return Ok((procs, targets));
        }
        if Instant::now() > deadline {
            bail!("no {n}-voter cluster: {m}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The certificates of a benchmark etcd cluster, as the API server talks
/// to etcd in Kubernetes: TLS on client and peer URLs, client certificates
/// required. One CA; one leaf for 127.0.0.1 that serves and authenticates
/// (peers use it both ways), also used by the benchmark client.
struct EtcdPki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    tls: Arc<Tls>,
}

impl EtcdPki {
    fn create(dir: &Path) -> Result<Self> {
        use rcgen::{
            BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
        };
        std::fs::create_dir_all(dir)?;
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key)?;
        let key = KeyPair::generate()?;
        let mut leaf = CertificateParams::new(vec!["localhost".to_string()])?;
        leaf.subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        leaf.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = leaf.signed_by(&key, &ca_cert, &ca_key)?;
        let pki = Self {
            ca: dir.join("ca.crt"),
            cert: dir.join("etcd.crt"),
            key: dir.join("etcd.key"),
            tls: Arc::new(Tls {
                ca: ca_cert.pem(),
                identity: Some(wasmkube::tls::KeyPairPem {
                    cert: cert.pem(),
                    key: key.serialize_pem(),
                }),
            }),
        };
        std::fs::write(&pki.ca, ca_cert.pem())?;
        std::fs::write(&pki.cert, cert.pem())?;
        std::fs::write(&pki.key, key.serialize_pem())?;
        Ok(pki)
    }

    /// etcd's flags for these certificates.
    fn flags(&self) -> Vec<std::ffi::OsString> {
        let mut f = Vec::new();
        for (flag, path) in [
            ("--trusted-ca-file", &self.ca),
            ("--cert-file", &self.cert),
            ("--key-file", &self.key),
            ("--peer-trusted-ca-file", &self.ca),
            ("--peer-cert-file", &self.cert),
            ("--peer-key-file", &self.key),
        ] {
            f.push(flag.into());
            f.push(path.into());
        }
        f.push("--client-cert-auth".into());
        f.push("--peer-client-cert-auth".into());
        f
    }
}

/// An etcd cluster of `n` members (1 is a lone etcd) on loopback, formed
/// statically, over TLS with client certificates (as wasmkube's servers).
async fn start_etcd_cluster(bin: &str, dir: &Path, n: usize) -> Result<(Vec<Proc>, Vec<Target>)> {
    let pki = EtcdPki::create(&dir.join("pki"))?;
    let ports: Vec<(u16, u16)> = (0..n)
        .map(|_| Ok((free_port()?, free_port()?)))
        .collect::<Result<_>>()?;
    let initial = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("m{i}=https://127.0.0.1:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut procs = Vec::new();
    let mut targets = Vec::new();
    for (i, (client, peer)) in ports.iter().enumerate() {
        let child = Command::new(bin)
            .args(["--name", &format!("m{i}"), "--data-dir"])
            .arg(dir.join(format!("m{i}")))
            .args([
                "--listen-client-urls",
                &format!("https://127.0.0.1:{client}"),
            ])
            .args([
                "--advertise-client-urls",
                &format!("https://127.0.0.1:{client}"),
            ])
            .args(["--listen-peer-urls", &format!("https://127.0.0.1:{peer}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("https://127.0.0.1:{peer}"),
            ])
            .args(["--initial-cluster", &initial])
            .args(["--initial-cluster-state", "new"])
            .args(pki.flags())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {bin}"))?;
        procs.push(Proc(child));
        targets.push(Target::Etcd {
            url: format!("https://127.0.0.1:{client}"),
            http: pki.tls.client()?,
            tls: pki.tls.clone(),
        });
    }
    for t in &targets {
        let Target::Etcd { url, http, .. } = t else {
            unreachable!("built above as etcd targets")
        };
        let mut healthy = false;
        for _ in 0..600 {
            if http
                .get(format!("{url}/health"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                healthy = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !healthy {
            bail!("etcd member at {url} did not become healthy");
        }
    }
    Ok((procs, targets))
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

async fn bench(targets: &[Target], args: &Args, rows: &mut Vec<String>) -> Result<()> {
    let target = &targets[0];
    for &c in &args.clients {
        for update in [false, true] {
            let prefix = format!("b{c}-");
            if update {
                // make sure every object an update touches exists
                for client in 0..c {
                    for i in 0..64 {
                        let _ = targets[client % targets.len()]
                            .write(&prefix, &format!("c{client}-{i}"), "x", false)
                            .await;
                    }
                }
            }
            let m = run_writes(
                targets,
                c,
                args.seconds,
                args.value_size,
                update,
                &prefix,
                args.connection_per_client,
            )
            .await?;
            rows.push(format!(
                "| {} ×{} | {} | {c} | {:.0} | {} | {} |",
                target.name(),
                targets.len(),
                if update { "update" } else { "create" },
                m.ops as f64 / m.elapsed.as_secs_f64(),
                ms(m.hist.value_at_quantile(0.5)),
                ms(m.hist.value_at_quantile(0.99)),
            ));
            eprintln!("{}", rows.last().expect("pushed"));
        }
    }
    let h = run_watch(target, args.watchers, args.watch_events, args.value_size).await?;
    rows.push(format!(
        "| {} ×{} | watch delivery ({} watchers, {} events) | 1 writer | {} deliveries | {} | {} |",
        target.name(),
        targets.len(),
        args.watchers,
        args.watch_events,
        h.len(),
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
    ));
    eprintln!("{}", rows.last().expect("pushed"));
    Ok(())
}

mod instantiate {
    //! Instance start-up in the node's Wasm runtime, without the control
    //! plane: create (compiled module cached) + start + wait for a guest that
    //! exits at once, and an exec (a fresh instance beside a running one).

    use super::*;
    use wasmkube_runtime::wasm::{WasmConfig, WasmRuntime};
    use wasmkube_runtime::{ContainerId, ContainerRuntime, ContainerSpec, ExecIo};

    #[derive(Parser)]
    pub struct InstArgs {
        /// The built example guests.
        #[arg(long, default_value = "examples/target")]
        examples: PathBuf,
        /// Instances per measurement.
        #[arg(long, default_value_t = 1000)]
        runs: usize,
    }

    fn spec(id: &str, image: &Path, args: &[&str], log: PathBuf) -> ContainerSpec {
        ContainerSpec {
            id: ContainerId(id.into()),
            image: format!("file://{}", image.display()),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: vec![("POD_NAME".into(), "bench".into())],
            working_dir: None,
            mounts: vec![],
            memory_limit: None,
            cpu_millis: None,
            log_path: log,
            pull_policy: Default::default(),
            pull_credentials: None,
            pod_ip: None,
            name_lookup: None,
            http: Default::default(),
            sandbox: None,
            linux: Default::default(),
        }
    }

    pub async fn run(args: InstArgs) -> Result<()> {
        let tmp = tempfile_dir()?;
        let rt = WasmRuntime::new(WasmConfig {
            cache_dir: tmp.join("cache"),
            image_dir: tmp.join("images"),
            pooling_instances: Some(1000),
            extra_roots: Vec::new(),
            baseline_compiler: true,
        })?;
        let empty = tmp.join("empty.wasm");
        // (module (memory (export "memory") 1) (func (export "_start")))
        let mut bytes =
            b"\0asm\x01\0\0\0\x01\x04\x01\x60\0\0\x03\x02\x01\0\x05\x03\x01\0\x01\x07\x13\x02"
                .to_vec();
        bytes.extend_from_slice(b"\x06memory\x02\0\x06_start\0\0\x0a\x04\x01\x02\0\x0b");
        std::fs::write(&empty, bytes)?;
        let examples = std::path::absolute(&args.examples)?;
        let p1_hello = examples.join("wasm32-wasip1/release/hello.wasm");
        let p2_hello = examples.join("wasm32-wasip2/release/hello.wasm");
        let web = examples.join("wasm32-wasip2/release/webserver.wasm");
        let mut rows = Vec::new();
        for (label, image) in [
            ("core module, empty `_start` (P1)", &empty),
            ("hello example (P1 module)", &p1_hello),
            ("hello example (P2 component)", &p2_hello),
        ] {
            let mut hist = Histogram::<u64>::new(3)?;
            for i in 0..=args.runs {
                let s = spec(
                    &format!("c{i}"),
                    image,
                    &["hello"],
                    tmp.join(format!("log-{i}")),
                );
                let id = s.id.clone();
                let t = Instant::now();
                rt.create(s).await?;
                rt.start(&id).await?;
                let exit = rt.wait(&id).await?;
                let took = t.elapsed();
                rt.remove(&id).await?;
                let _ = std::fs::remove_file(tmp.join(format!("log-{i}")));
                anyhow::ensure!(exit.exit_code == 0, "{label}: exit {}", exit.exit_code);
                // the rest run the Cranelift code
                rt.tiered_up().await;
                if i > 0 {
                    // the first run compiles; the rest measure instantiation
                    hist.record(took.as_micros() as u64)?;
                }
            }
            rows.push(row(label, &hist));
        }
        // exec: a fresh instance of a running container's component
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?.port()
        };
        let mut s = spec("web", &web, &["webserver"], tmp.join("web.log"));
        s.env.push(("PORT".into(), port.to_string()));
        rt.create(s).await?;
        rt.start(&ContainerId("web".into())).await?;
        let mut hist = Histogram::<u64>::new(3)?;
        for _ in 0..args.runs {
            let io = ExecIo {
                resize: None,
                tty: false,
                stdin: None,
                stdout: Box::new(tokio::io::sink()),
                stderr: Box::new(tokio::io::sink()),
            };
            let t = Instant::now();
            let exit = rt
                .exec(
                    &ContainerId("web".into()),
                    vec!["webserver".into(), "check".into()],
                    io,
                )
                .await?;
            hist.record(t.elapsed().as_micros() as u64)?;
            anyhow::ensure!(exit.exit_code == 0, "exec: exit {}", exit.exit_code);
        }
        rows.push(row("exec `webserver check` (P2 component)", &hist));
        rt.stop(&ContainerId("web".into()), Duration::ZERO).await?;
        // compile time of modules never seen before (a distinct digest each)
        let cranelift = WasmRuntime::new(WasmConfig {
            cache_dir: tmp.join("cache-cranelift"),
            image_dir: tmp.join("images"),
            pooling_instances: None,
            extra_roots: Vec::new(),
            baseline_compiler: false,
        })?;
        let mut compiles = Vec::new();
        for (label, path) in [
            (
                "worker example (P1 module)",
                examples.join("wasm32-wasip1/release/worker.wasm"),
            ),
            ("webserver example (P2 component)", web.clone()),
        ] {
            let bytes = std::fs::read(&path)?;
            for (compiler, runtime) in [("Winch", &rt), ("Cranelift", &cranelift)] {
                let mut hist = Histogram::<u64>::new(3)?;
                for i in 0..args.runs.min(50) {
                    let mut unique = bytes.clone();
                    // a custom section makes a new digest
                    unique.extend_from_slice(&[0, 5, 4, b'r', b'u', b'n', (i % 256) as u8]);
                    let digest = wasmkube_runtime::image::digest(&unique);
                    let t = Instant::now();
                    runtime
                        .compile(unique, &digest)
                        .await
                        .map_err(|e| anyhow::anyhow!("{label}: {e}"))?;
                    hist.record(t.elapsed().as_micros() as u64)?;
                    // the tier-up is not measured
                    runtime.tiered_up().await;
                }
                compiles.push(row(
                    &format!("{label}, {} KB: {compiler}", bytes.len() / 1000),
                    &hist,
                ));
            }
        }
        let _ = std::fs::remove_dir_all(&tmp);
        println!("Machine: {}", machine());
        println!("{} runs each, compiled artifacts cached\n", args.runs);
        println!("| guest | runs | p50 ms | p99 ms | max ms |");
        println!("|---|---|---|---|---|");
        for r in rows {
            println!("{r}");
        }
        println!(
            "\nCompile of a module never seen before (Cranelift: with its disk-cache write):\n"
        );
        println!("| module: compiler | runs | p50 ms | p99 ms | max ms |");
        println!("|---|---|---|---|---|");
        for r in compiles {
            println!("{r}");
        }
        Ok(())
    }

    fn row(label: &str, h: &Histogram<u64>) -> String {
        format!(
            "| {label} | {} | {} | {} | {} |",
            h.len(),
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            ms(h.max())
        )
    }
}

mod pods {
    //! Wasm pod start latency and density, on the embedded node of one `wk server`.

    use super::*;
    use std::collections::HashMap;
    use tokio::sync::oneshot;

    #[derive(Parser)]
    pub struct PodArgs {
        /// The wk binary.
        #[arg(long, default_value = "target/release/wk")]
        wk: PathBuf,
        /// A long-running, mostly idle guest (the worker example sleeping between ticks).
        #[arg(
            long,
            default_value = "examples/target/wasm32-wasip1/release/worker.wasm"
        )]
        module: PathBuf,
        /// Pods per latency run.
        #[arg(long, default_value_t = 200)]
        pods: usize,
        /// Pods per cold latency run (default: `--pods`; 0 measures warm starts only).
        #[arg(long)]
        cold_pods: Option<usize>,
        /// Idle pod counts for the density runs.
        #[arg(long, default_value = "100,1000", value_delimiter = ',')]
        density: Vec<usize>,
        /// The node's pod capacity (`wk server --max-pods`) for the density runs.
        #[arg(long, default_value_t = 1000)]
        max_pods: usize,
        /// An extra `wk server` flag for the density runs (repeatable), e.g.
        /// `--server-arg=--watch-history=1000`.
        #[arg(long, allow_hyphen_values = true)]
        server_arg: Vec<String>,
        /// Raise the open-file limit (soft and hard; raising the hard limit
        /// needs CAP_SYS_RESOURCE) to this before starting the nodes, which
        /// inherit it: what `LimitNOFILE=` in a systemd unit does. Default:
        /// as inherited.
        #[arg(long)]
        open_files: Option<u64>,
        /// Density pods without the ServiceAccount token volume
        /// (`automountServiceAccountToken: false`, as for workloads that
        /// never call the API): one preopened directory each, not two.
        #[arg(long)]
        no_token: bool,
        /// Density pods without the emptyDir at `/data` (the worker writes
        /// its ticks to standard output only): with the token volume, a
        /// default pod's one preopened directory.
        #[arg(long)]
        no_volume: bool,
        /// Also measure the density runs again after this many idle seconds.
        #[arg(long, default_value_t = 0)]
        settle: u64,
    }

    /// What an idle density pod leaves out.
    #[derive(Clone, Copy, Default)]
    struct Idle {
        /// `automountServiceAccountToken: false`.
        no_token: bool,
        /// No emptyDir at `/data`.
        no_volume: bool,
    }

    /// Between cold starts: a new module arrives on an otherwise idle node
    /// (its background Cranelift compile done), not in a burst of hundreds.
    const COLD_PAUSE: Duration = Duration::from_millis(500);

    /// Append a custom section so each copy has its own digest (a cold compile).
    fn unique(module: &[u8], i: usize) -> Vec<u8> {
        let name = format!("wk-bench-{i}");
        let mut payload = vec![name.len() as u8];
        payload.extend_from_slice(name.as_bytes());
        let mut out = module.to_vec();
        out.push(0); // custom section id
        out.push(payload.len() as u8);
        out.extend_from_slice(&payload);
        out
    }

    /// The descriptors process `pid` has open.
    fn open_files(pid: u32) -> usize {
        std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
    }

    pub(super) fn rss_kib(pid: u32) -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(0)
    }

    struct Cluster {
        proc: Proc,
        /// `wk agent`, when the node runs apart from the server.
        agent: Option<Proc>,
        url: String,
        node: String,
        http: reqwest::Client,
        waiting: Arc<std::sync::Mutex<HashMap<String, oneshot::Sender<Instant>>>>,
    }

    impl Cluster {
        async fn start(bin: &Path, dir: &Path, max_pods: usize, extra: &[&str]) -> Result<Self> {
            Self::start_with(bin, dir, max_pods, extra, false).await
        }

        /// With `separate_agent`, `wk server --disable-agent` and a `wk agent`
        /// process as the node.
        async fn start_with(
            bin: &Path,
            dir: &Path,
            max_pods: usize,
            extra: &[&str],
            separate_agent: bool,
        ) -> Result<Self> {
            let max = max_pods.to_string();
            let node_flags = ["--heartbeat-ms", "10000", "--max-pods", &max];
            let mut flags = if separate_agent {
                vec!["--disable-agent"]
            } else {
                node_flags.to_vec()
            };
            flags.extend_from_slice(extra);
            // embedded: the node's files are in DIR/agent, as the OCI run expects
            let server_dir = if separate_agent {
                dir.join("server")
            } else {
                dir.to_path_buf()
            };
            let (proc, target) = start_wk(bin, &server_dir, &flags).await?;
            let Target::Wk { url, http, .. } = target else {
                unreachable!()
            };
            let agent = if separate_agent {
                Some(start_agent(
                    bin,
                    &url,
                    &server_dir.join("token"),
                    "bench-agent",
                    &dir.join("agent"),
                    &node_flags,
                )?)
            } else {
                None
            };
            let node = loop {
                let l: Value = http
                    .get(format!("{url}/api/v1/nodes"))
                    .send()
                    .await?
                    .json()
                    .await?;
                if let Some(n) = l["items"][0]["metadata"]["name"].as_str() {
                    break n.to_string();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let waiting: Arc<std::sync::Mutex<HashMap<String, oneshot::Sender<Instant>>>> =
                Arc::default();
            // one watch tells every waiter when its pod is Running
            let w = waiting.clone();
            watch_objects(&http, &url, "/api/v1/pods", move |o| {
                if o["status"]["phase"] == "Running"
                    && o["status"]["containerStatuses"][0]["state"]["running"].is_object()
                {
                    let name = o["metadata"]["name"].as_str().unwrap_or_default();
                    if let Some(tx) = w.lock().unwrap().remove(name) {
                        let _ = tx.send(Instant::now());
                    }
                }
            })
            .await?;
            Ok(Self {
                proc,
                agent,
                url,
                node,
                http,
                waiting,
            })
        }

        /// Create a pod running `image` and wait until it is Running; returns the latency.
        async fn run_pod(&self, name: &str, image: &Path) -> Result<Duration> {
            self.run_idle_pod(name, image, Idle::default()).await
        }

        /// [`Self::run_pod`], without the token volume or the `/data`
        /// emptyDir as `idle` says.
        async fn run_idle_pod(&self, name: &str, image: &Path, idle: Idle) -> Result<Duration> {
            let mut spec = json!({"volumes": [{"name": "data", "emptyDir": {}}],
                "containers": [{"name": "w", "image": format!("file://{}", image.display()), "args": ["0", "3600000"],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]});
            if idle.no_volume {
                spec = json!({"containers": [{"name": "w", "image": format!("file://{}", image.display()),
                    "args": ["0", "3600000", "-"]}]});
            }
            if idle.no_token {
                spec["automountServiceAccountToken"] = json!(false);
            }
            self.run_spec(name, spec).await
        }

        /// Create a pod with `spec` (bound to the node) and wait until it is Running.
        async fn run_spec(&self, name: &str, mut spec: Value) -> Result<Duration> {
            let (tx, rx) = oneshot::channel();
            self.waiting.lock().unwrap().insert(name.to_string(), tx);
            spec["nodeName"] = json!(self.node);
            let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec});
            let start = Instant::now();
            let r = self
                .http
                .post(format!("{}/api/v1/namespaces/default/pods", self.url))
                .json(&pod)
                .send()
                .await?;
            if !r.status().is_success() {
                bail!("creating {name}: {}", r.text().await.unwrap_or_default());
            }
            let at = tokio::time::timeout(Duration::from_secs(60), rx)
                .await
                .context("pod did not start")??;
            Ok(at - start)
        }
    }

    #[derive(Parser)]
    pub struct OciArgs {
        /// The wk binary.
        #[arg(long, default_value = "target/release/wk")]
        wk: PathBuf,
        /// The Wasm guest run beside (the worker example).
        #[arg(
            long,
            default_value = "examples/target/wasm32-wasip1/release/worker.wasm"
        )]
        module: PathBuf,
        /// The busybox the Linux image is built from (Debian's busybox-static).
        #[arg(long, default_value = "/bin/busybox")]
        busybox: PathBuf,
        /// Pods per latency run (each of OCI, Wasm and mixed).
        #[arg(long, default_value_t = 50)]
        pods: usize,
        /// Idle OCI pods for the footprint run.
        #[arg(long, default_value_t = 50)]
        density: usize,
    }

    /// A docker-archive of a one-layer busybox image tagged `tag`.
    fn busybox_archive(busybox: &Path, out: &Path, tag: &str) -> Result<()> {
        let (layer, config) = busybox_image(busybox)?;
        let header = |kind: tar::EntryType, mode: u32, size: u64| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(size);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            h
        };
        let manifest =
            json!([{"Config": "config.json", "RepoTags": [tag], "Layers": ["layer.tar"]}]);
        let mut b = tar::Builder::new(std::fs::File::create(out)?);
        for (name, data) in [
            ("manifest.json", manifest.to_string().into_bytes()),
            ("config.json", config),
            ("layer.tar", layer),
        ] {
            b.append_data(
                &mut header(tar::EntryType::Regular, 0o644, data.len() as u64),
                name,
                &data[..],
            )?;
        }
        b.finish()?;
        Ok(())
    }

    /// A one-layer busybox image: its layer (tar) and config.
    fn busybox_image(busybox: &Path) -> Result<(Vec<u8>, Vec<u8>)> {
        let header = |kind: tar::EntryType, mode: u32, size: u64| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(size);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            h
        };
        let mut layer = tar::Builder::new(Vec::new());
        for d in ["bin", "tmp", "etc"] {
            layer.append_data(
                &mut header(tar::EntryType::Directory, 0o1777, 0),
                d,
                &[][..],
            )?;
        }
        let bin =
            std::fs::read(busybox).with_context(|| format!("reading {}", busybox.display()))?;
        layer.append_data(
            &mut header(tar::EntryType::Regular, 0o755, bin.len() as u64),
            "bin/busybox",
            &bin[..],
        )?;
        for a in ["sh", "sleep"] {
            layer.append_link(
                &mut header(tar::EntryType::Symlink, 0o777, 0),
                format!("bin/{a}"),
                "busybox",
            )?;
        }
        let layer = layer.into_inner()?;
        let config = serde_json::to_vec(
            &json!({"architecture": wasmkube_runtime::oci::images::host_arch(), "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [wasmkube_runtime::image::digest(&layer)]}}),
        )?;
        Ok((layer, config))
    }

    /// Push a one-layer image (gzip layer) to a plain-HTTP registry with the
    /// distribution API: two monolithic blob uploads and the manifest.
    async fn push_image(
        registry: &str,
        repo: &str,
        tag: &str,
        layer_gz: &[u8],
        config: &[u8],
    ) -> Result<()> {
        let http = reqwest::Client::builder().no_proxy().build()?;
        for blob in [layer_gz, config] {
            let digest = wasmkube_runtime::image::digest(blob);
            let r = http
                .post(format!("http://{registry}/v2/{repo}/blobs/uploads/"))
                .send()
                .await?
                .error_for_status()?;
            let loc = r
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .context("upload location")?
                .to_string();
            let url = if loc.starts_with("http") {
                loc
            } else {
                format!("http://{registry}{loc}")
            };
            let sep = if url.contains('?') { '&' } else { '?' };
            http.put(format!("{url}{sep}digest={digest}"))
                .header("content-type", "application/octet-stream")
                .body(blob.to_vec())
                .send()
                .await?
                .error_for_status()?;
        }
        let manifest = json!({"schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": wasmkube_runtime::image::digest(config), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": wasmkube_runtime::image::digest(layer_gz), "size": layer_gz.len()}]});
        http.put(format!("http://{registry}/v2/{repo}/manifests/{tag}"))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(manifest.to_string())
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// Pull and unpack time of the busybox image from a local
    /// docker-registry (a fresh store each time); None without one.
    async fn pull_times(busybox: &Path, runs: usize) -> Result<Option<(Histogram<u64>, usize)>> {
        let tmp = tempfile_dir()?.join("registry");
        std::fs::create_dir_all(&tmp)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        std::fs::write(
            tmp.join("config.yml"),
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                tmp.join("data").display()
            ),
        )?;
        let Ok(child) = std::process::Command::new("docker-registry")
            .arg("serve")
            .arg(tmp.join("config.yml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        else {
            return Ok(None);
        };
        struct Kill(std::process::Child);
        impl Drop for Kill {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let _registry = Kill(child);
        let registry = format!("127.0.0.1:{port}");
        let (layer, config) = busybox_image(busybox)?;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &layer)?;
        let layer_gz = gz.finish()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match push_image(&registry, "bench/busybox", "1", &layer_gz, &config).await {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let image = format!("{registry}/bench/busybox:1");
        let mut h = Histogram::<u64>::new(3)?;
        for i in 0..runs {
            let store = wasmkube_runtime::oci::images::ImageStore::new(
                tmp.join(format!("store-{i}")),
                Vec::new(),
            );
            let t = Instant::now();
            store
                .get(&image, wasmkube_runtime::image::PullPolicy::Always, None)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            h.record(t.elapsed().as_micros() as u64)?;
        }
        Ok(Some((h, layer_gz.len())))
    }

    pub async fn run_oci(args: OciArgs) -> Result<()> {
        let tmp = tempfile_dir()?;
        let dir = tmp.join("oci");
        let archive = tmp.join("busybox.tar");
        let tag = "bench.invalid/busybox:1";
        busybox_archive(&args.busybox, &archive, tag)?;
        let t = Instant::now();
        let st = std::process::Command::new(&args.wk)
            .arg("image")
            .arg("import")
            .arg(&archive)
            .arg("--data-dir")
            .arg(dir.join("agent"))
            .stdout(std::process::Stdio::null())
            .status()?;
        anyhow::ensure!(st.success(), "wk image import failed");
        let import = t.elapsed();
        let module = std::fs::canonicalize(&args.module)
            .with_context(|| format!("{} (build the examples first)", args.module.display()))?;
        let wasm = format!("file://{}", module.display());
        let oci_spec = json!({"terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": tag, "command": ["sleep", "3600"]}]});
        let wasm_spec = json!({"volumes": [{"name": "data", "emptyDir": {}}],
            "containers": [{"name": "w", "image": wasm, "args": ["0", "3600000"],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]});
        let mixed_spec = json!({"terminationGracePeriodSeconds": 1, "volumes": [{"name": "data", "emptyDir": {}}],
            "containers": [
                {"name": "w", "image": wasm, "args": ["0", "3600000"], "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                {"name": "c", "image": tag, "command": ["sleep", "3600"], "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]});
        let c = Cluster::start(&args.wk, &dir, 1000, &[]).await?;
        c.run_spec("warm-oci", oci_spec.clone()).await?;
        c.run_spec("warm-wasm", wasm_spec.clone()).await?;
        let (mut oci, mut wasm_h, mut mixed) = (
            Histogram::<u64>::new(3)?,
            Histogram::<u64>::new(3)?,
            Histogram::<u64>::new(3)?,
        );
        for i in 0..args.pods {
            oci.record(
                c.run_spec(&format!("oci-{i}"), oci_spec.clone())
                    .await?
                    .as_micros() as u64,
            )?;
            wasm_h.record(
                c.run_spec(&format!("wasm-{i}"), wasm_spec.clone())
                    .await?
                    .as_micros() as u64,
            )?;
            mixed.record(
                c.run_spec(&format!("mixed-{i}"), mixed_spec.clone())
                    .await?
                    .as_micros() as u64,
            )?;
        }
        // footprint: the shims' RSS and the containers' memory, per OCI pod
        let shims = |dir: &Path| -> (usize, u64) {
            let needle = dir.display().to_string();
            let mut n = 0;
            let mut kib = 0;
            for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd);
                if cmd.contains("__oci-shim") && cmd.contains(&needle) {
                    n += 1;
                    kib += rss_kib(pid);
                }
            }
            (n, kib)
        };
        let server_before = rss_kib(c.proc.0.id());
        for i in 0..args.density {
            c.run_spec(&format!("idle-{i}"), oci_spec.clone()).await?;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let server_after = rss_kib(c.proc.0.id());
        let (n, shim_kib) = shims(&dir);
        let cg: u64 =
            std::fs::read_to_string("/sys/fs/cgroup/memory/wasmkube/besteffort/memory.stat")
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("total_rss ")?.trim().parse().ok())
                })
                .unwrap_or(0);
        let total_oci = args.pods + args.density + 1 + args.pods; // oci + idle + warm + mixed
        println!("Machine: {}", machine());
        println!(
            "Linux pods through runc beside Wasm pods (wk-bench oci --pods {} --density {}):\n",
            args.pods, args.density
        );
        println!("| Pods | Count | p50 | p99 | max |\n|---|---|---|---|---|");
        println!("{}", row("OCI (busybox, image on the node)", &oci));
        println!("{}", row("Wasm (worker, compiled module cached)", &wasm_h));
        println!("{}", row("Mixed (one Wasm + one OCI container)", &mixed));
        println!(
            "\n- Import of the busybox image (docker-archive, {} KiB, digest and unpack): {:.1} ms",
            std::fs::metadata(&archive)?.len() / 1024,
            import.as_secs_f64() * 1000.0
        );
        match pull_times(&args.busybox, 10).await? {
            Some((h, bytes)) => println!(
                "- Pull and unpack of the busybox image from a local docker-registry ({} KiB gzip layer, fresh store, 10 runs): p50 {:.1} ms, max {:.1} ms",
                bytes / 1024,
                h.value_at_quantile(0.5) as f64 / 1000.0,
                h.max() as f64 / 1000.0
            ),
            None => println!("- Pull: skipped (no docker-registry on this machine)"),
        }
        println!(
            "- Shims: {n} running, {} KiB RSS each on average",
            shim_kib / n.max(1) as u64
        );
        println!(
            "- Containers' RSS (BestEffort cgroup, {total_oci} OCI containers): {} KiB each",
            cg / 1024 / total_oci.max(1) as u64
        );
        println!(
            "- wk server (with its agent) RSS growth for {} idle OCI pods: {} KiB per pod",
            args.density,
            server_after.saturating_sub(server_before) / args.density.max(1) as u64
        );
        drop(c);
        // the containers outlive the server by design: end them
        let root = dir.join("agent/oci/runc");
        let ids = std::process::Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["list", "-q"])
            .output()?;
        for id in String::from_utf8_lossy(&ids.stdout).lines() {
            let _ = std::process::Command::new("runc")
                .arg("--root")
                .arg(&root)
                .args(["delete", "--force", id])
                .status();
        }
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let prefix = dir.display().to_string();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        points.reverse();
        for m in points {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(m)
                .status();
        }
        let _ = std::fs::remove_dir_all(&tmp);
        Ok(())
    }

    fn row(label: &str, h: &Histogram<u64>) -> String {
        format!(
            "| {label} | {} | {} | {} | {} |",
            h.len(),
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            ms(h.max())
        )
    }

    pub async fn run(args: PodArgs) -> Result<()> {
        if let Some(n) = args.open_files {
            let lim = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            // SAFETY: setrlimit with a valid pointer to a local rlimit
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .context(format!("raising the open-file limit to {n}"));
            }
        }
        let module = std::fs::read(&args.module).with_context(|| {
            format!(
                "reading {} (build the examples first)",
                args.module.display()
            )
        })?;
        let tmp = tempfile_dir()?;
        let images = tmp.join("images");
        std::fs::create_dir_all(&images)?;
        let mut out = Vec::new();

        // Latency: cold (a distinct module per pod: load + compile) and warm
        // (one module, cached); cold again with Cranelift only.
        let (mut cold, mut warm) = (Histogram::<u64>::new(3)?, Histogram::<u64>::new(3)?);
        let mut cold_cranelift = Histogram::<u64>::new(3)?;
        let warm_image = images.join("warm.wasm");
        std::fs::write(&warm_image, &module)?;
        let cold_pods = args.cold_pods.unwrap_or(args.pods);
        if cold_pods > 0 {
            let cranelift_only = ["--wasm-baseline-compiler", "false"];
            let c =
                Cluster::start(&args.wk, &tmp.join("lat-cranelift"), 1000, &cranelift_only).await?;
            for i in 0..cold_pods {
                let img = images.join(format!("cranelift-{i}.wasm"));
                std::fs::write(&img, unique(&module, cold_pods + i))?;
                let took = c.run_pod(&format!("cold-{i}"), &img).await?;
                cold_cranelift.record(took.as_micros() as u64)?;
                tokio::time::sleep(COLD_PAUSE).await;
            }
        }
        let c = Cluster::start(&args.wk, &tmp.join("lat"), 1000, &[]).await?;
        for i in 0..cold_pods {
            let img = images.join(format!("cold-{i}.wasm"));
            std::fs::write(&img, unique(&module, i))?;
            cold.record(c.run_pod(&format!("cold-{i}"), &img).await?.as_micros() as u64)?;
            tokio::time::sleep(COLD_PAUSE).await;
        }
        for i in 0..args.pods {
            warm.record(
                c.run_pod(&format!("warm-{i}"), &warm_image)
                    .await?
                    .as_micros() as u64,
            )?;
        }
        out.push(row(
            "apply → Running, cold (new module: load + Winch compile; Cranelift in the background)",
            &cold,
        ));
        out.push(row(
            "apply → Running, cold, `--wasm-baseline-compiler false` (load + Cranelift compile)",
            &cold_cranelift,
        ));
        out.push(row("apply → Running, warm (compiled module cached)", &warm));
        drop(c);

        // Density: idle pods on one node. Embedded: RSS of the whole wk
        // server process (control plane and node); separate: RSS of the
        // `wk agent` process, what the node itself costs.
        let mut density = Vec::new();
        // `--density 0`: no density run
        for &n in args.density.iter().filter(|&&n| n > 0) {
            for separate in [false, true] {
                let c = Cluster::start_with(
                    &args.wk,
                    &tmp.join(format!("density-{n}-{separate}")),
                    args.max_pods.max(n),
                    &args
                        .server_arg
                        .iter()
                        .map(String::as_str)
                        .collect::<Vec<_>>(),
                    separate,
                )
                .await?;
                // separate: the node, and the control plane without it
                let mut measured = vec![(c.agent.as_ref().unwrap_or(&c.proc).0.id(), 0, 0)];
                if separate {
                    measured.push((c.proc.0.id(), 0, 0));
                }
                let idle = Idle {
                    no_token: args.no_token,
                    no_volume: args.no_volume,
                };
                c.run_idle_pod("warmup", &warm_image, idle).await?;
                tokio::time::sleep(Duration::from_secs(1)).await;
                for (pid, before, fds) in &mut measured {
                    *before = rss_kib(*pid);
                    *fds = open_files(*pid);
                }
                // the warm-up pod counts: n pods in all (the node's pool holds max-pods)
                for i in 1..n {
                    c.run_idle_pod(&format!("idle-{i}"), &warm_image, idle)
                        .await?;
                }
                let mut waits = vec![2];
                if args.settle > 0 {
                    waits.push(args.settle);
                }
                let mut waited = 0;
                for wait in waits {
                    tokio::time::sleep(Duration::from_secs(wait - waited)).await;
                    waited = wait;
                    for (i, &(pid, before, fds_before)) in measured.iter().enumerate() {
                        let after = rss_kib(pid);
                        let fds = open_files(pid);
                        let process = match (separate, i) {
                            (false, _) => "`wk server` (embedded agent)",
                            (true, 0) => "`wk agent` (node alone)",
                            (true, _) => "`wk server --disable-agent` (control plane alone)",
                        };
                        density.push(format!(
                            "| {n} | {process}, after {wait} s | {:.1} | {:.1} | {:.1} | {fds} | {:.2} |",
                            before as f64 / 1024.0,
                            after as f64 / 1024.0,
                            (after.saturating_sub(before)) as f64 / n as f64,
                            fds.saturating_sub(fds_before) as f64 / n as f64
                        ));
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(&tmp);
        println!("Machine: {}", machine());
        println!(
            "Module: {} ({} bytes), {} pods per latency run\n",
            args.module.display(),
            module.len(),
            args.pods
        );
        println!("| measurement | pods | p50 ms | p99 ms | max ms |");
        println!("|---|---|---|---|---|");
        for r in out {
            println!("{r}");
        }
        if !density.is_empty() {
            println!(
                "\n| idle pods | process | RSS before MiB | RSS after MiB | KiB per pod | open files | files per pod |"
            );
            println!("|---|---|---|---|---|---|---|");
        }
        for r in density {
            println!("{r}");
        }
        Ok(())
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or_default().trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
                    / 1024
                    / 1024
            })
        })
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores ({cpu}), {mem} GiB RAM, Linux {}",
        kernel.trim()
    )
}

#[tokio::main]
async fn main() -> Result<()> {
    wasmkube::tls::install_default_provider();
    match Bench::parse() {
        Bench::Store(args) => store_main(args).await,
        Bench::Pods(args) => pods::run(args).await,
        Bench::Instantiate(args) => instantiate::run(args).await,
        Bench::Http(args) => http::run(args).await,
        Bench::Lists(args) => lists::run(args).await,
        Bench::Oci(args) => pods::run_oci(args).await,
        Bench::Failover(args) => failover(args).await,
        Bench::Chaos(args) => chaos::run(args).await,
        Bench::Wear(args) => wear::run(args).await,
        Bench::Hollow(args) => hollow::run(args).await,
        Bench::Schedule(args) => schedule::run(args),
    }
}

/// One three-server cluster: start, kill -9 its leader, write to a
/// survivor until a write is accepted. Returns the time from the kill.
async fn failover_once(args: &FailoverArgs, dir: &Path) -> Result<Duration> {
    let mut base = vec!["--disable-agent"];
    base.extend(args.server_flag.iter().map(String::as_str));
    let (procs, targets) = start_wk_cluster(&args.wk, dir, 3, &base).await?;
    let Target::Wk { url, http, .. } = &targets[0] else {
        bail!("not a wk target")
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let leader = loop {
        let m = members(http, url).await?;
        let members = m["members"].as_array().cloned().unwrap_or_default();
        if let Some(l) = members.iter().find(|x| x["leader"] == true) {
            break l["address"].as_str().unwrap_or_default().to_string();
        }
        if Instant::now() > deadline {
            bail!("no leader: {m}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut procs: Vec<(Target, Proc)> = targets.into_iter().zip(procs).collect();
    let li = procs
        .iter()
        .position(|(t, _)| matches!(t, Target::Wk { url, .. } if url.ends_with(&leader)))
        .context("the leader is one of the three")?;
    let (_, mut killed) = procs.remove(li);
    let (survivor, _) = &procs[0];
    let Target::Wk { url, http, .. } = survivor else {
        bail!("not a wk target")
    };
    let write = |i: usize| {
        http.post(format!("{url}/api/v1/namespaces/default/configmaps"))
            .timeout(Duration::from_secs(2))
            .json(&json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("failover-{i}")}, "data": {"v": "x"}}))
            .send()
    };
    // warm: the survivor's connections to the leader are open
    write(0).await?.error_for_status()?;
    let t0 = Instant::now();
    killed.0.kill()?;
    let _ = killed.0.wait();
    let mut i = 1;
    loop {
        if let Ok(r) = write(i).await {
            if r.status().is_success() {
                return Ok(t0.elapsed());
            }
        }
        i += 1;
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("no write accepted within 60 s of the kill");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn failover(args: FailoverArgs) -> Result<()> {
    let tmp = tempfile_dir()?;
    let mut times = Vec::new();
    for run in 0..args.runs {
        let dir = tmp.join(format!("run-{run}"));
        let t = failover_once(&args, &dir).await?;
        eprintln!("run {run}: {:.0} ms", t.as_secs_f64() * 1000.0);
        times.push(t);
        let _ = std::fs::remove_dir_all(&dir);
    }
    let _ = std::fs::remove_dir_all(&tmp);
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("Machine: {}", machine());
    println!(
        "Leader kill -9 → first accepted write on a survivor, {} runs, three servers on loopback{}",
        times.len(),
        if args.server_flag.is_empty() {
            String::new()
        } else {
            format!(" ({})", args.server_flag.join(" "))
        }
    );
    println!(
        "p50 {:.0} ms, min {:.0} ms, max {:.0} ms",
        ms(times[times.len() / 2]),
        ms(times[0]),
        ms(times[times.len() - 1])
    );
    Ok(())
}

async fn store_main(args: Args) -> Result<()> {
    let tmp = tempfile_dir()?;
    let mut rows = Vec::new();
    if ![1, 3, 5].contains(&args.servers) {
        bail!("--servers must be 1, 3 or 5");
    }
    {
        let (_p, targets) = start_wk_cluster(
            &args.wk,
            &tmp.join("wk"),
            args.servers,
            &["--disable-agent"],
        )
        .await?;
        bench(&targets, &args, &mut rows).await?;
    }
    if args.etcd != "none" {
        let (_p, targets) = start_etcd_cluster(&args.etcd, &tmp.join("etcd"), args.servers).await?;
        bench(&targets, &args, &mut rows).await?;
    }
    let _ = std::fs::remove_dir_all(&tmp);
    println!("Machine: {}", machine());
    println!(
        "Value size: {} bytes, {} s per measurement\n",
        args.value_size, args.seconds
    );
    println!("| system | operation | clients | ops/s | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    Ok(())
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("wk-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

mod http {
    //! HTTP functions: requests/s and latency of the hello function through
    //! the Ingress gateway, through the Service (agent proxy) and on the pod
    //! address, side by side with `wasmtime serve` on the same component and
    //! the same load generator; and activation latency from zero replicas.

    use super::*;

    #[derive(Parser)]
    pub struct HttpArgs {
        /// The wk binary.
        #[arg(long, default_value = "target/release/wk")]
        wk: PathBuf,
        /// The function component.
        #[arg(
            long,
            default_value = "examples/target/wasm32-wasip2/release/hello_http.wasm"
        )]
        component: PathBuf,
        /// A `wasmtime` CLI (wasmtime-cli 48.0.8) for the reference run ("none" to skip).
        #[arg(long, default_value = "wasmtime")]
        wasmtime: String,
        /// Load generator connections.
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// Seconds per load run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Activations from zero to time.
        #[arg(long, default_value_t = 5)]
        activations: usize,
    }

    /// What wrk reported.
    struct Load {
        rps: f64,
        p50: String,
        p99: String,
        errors: String,
    }

    /// Run wrk against `url` with `host`.
    fn wrk(url: &str, host: Option<&str>, args: &HttpArgs) -> Result<Load> {
        let mut cmd = Command::new("wrk");
        cmd.args([
            "-t2",
            &format!("-c{}", args.connections),
            &format!("-d{}s", args.seconds),
            "--latency",
        ]);
        if let Some(h) = host {
            cmd.args(["-H", &format!("Host: {h}")]);
        }
        let out = cmd
            .arg(url)
            .output()
            .context("running wrk (apt-get install wrk)")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let find = |prefix: &str| {
            text.lines()
                .map(str::trim)
                .find(|l| l.starts_with(prefix))
                .and_then(|l| l.split_whitespace().nth(1))
                .unwrap_or("?")
                .to_string()
        };
        let rps: f64 = find("Requests/sec:").parse().unwrap_or(0.0);
        let errors = text
            .lines()
            .find(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
            .map(|l| l.trim().to_string())
            .unwrap_or_else(|| "none".into());
        if rps == 0.0 {
            bail!("wrk reported nothing for {url}: {text}");
        }
        Ok(Load {
            rps,
            p50: find("50%"),
            p99: find("99%"),
            errors,
        })
    }

    /// GET an object or list from the API.
    async fn get_json(http: &reqwest::Client, url: &str, path: &str) -> Result<Value> {
        let resp = http.get(format!("{url}{path}")).send().await?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{path}: {status} {v}");
        }
        Ok(v)
    }

    async fn wait_for<T, F, Fut>(secs: u64, what: &str, mut f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = f().await {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!("timed out waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn run(args: HttpArgs) -> Result<()> {
        let component = std::fs::canonicalize(&args.component)
            .with_context(|| format!("{} (build the examples first)", args.component.display()))?;
        let tmp = tempfile_dir()?;
        let port = free_port()?;
        let (_server, target) = start_wk(
            &args.wk,
            &tmp.join("wk"),
            &[
                "--ingress-listen",
                &format!("127.0.0.1:{port}"),
                "--ingress-tls-listen",
                "off",
                "--horizontal-pod-autoscaler-sync-period",
                "1",
            ],
        )
        .await?;
        let Target::Wk { url, http, .. } = target else {
            bail!("not a wk server")
        };
        let post = |path: &str, body: Value| {
            let (http, url) = (http.clone(), url.clone());
            let path = path.to_string();
            async move {
                let resp = http.post(format!("{url}{path}")).json(&body).send().await?;
                if !resp.status().is_success() {
                    bail!("{path}: {} {}", resp.status(), resp.text().await?);
                }
                Ok::<_, anyhow::Error>(())
            }
        };
        post("/apis/apps/v1/namespaces/default/deployments", json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "hello"}, "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "hello"}},
            "template": {"metadata": {"labels": {"app": "hello"}, "annotations": {"wasmkube.io/http-concurrency": "1000"}},
                "spec": {"containers": [{"name": "hello", "image": format!("file://{}", component.display()),
                    "ports": [{"name": "http", "containerPort": 8080}]}]}}}})).await?;
        post(
            "/api/v1/namespaces/default/services",
            json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "hello"}, "spec": {"selector": {"app": "hello"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}),
        )
        .await?;
        post("/apis/networking.k8s.io/v1/namespaces/default/ingresses", json!({"apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress", "metadata": {"name": "hello"}, "spec": {"rules": [{"host": "bench.local", "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "hello", "port": {"number": 80}}}}]}}]}})).await?;
        let ingress = format!("http://127.0.0.1:{port}/");
        let get = |u: String| {
            let http = http.clone();
            async move {
                let r = http
                    .get(&u)
                    .header("host", "bench.local")
                    .send()
                    .await
                    .ok()?;
                (r.status() == 200).then_some(())
            }
        };
        wait_for(120, "the function through the Ingress", || {
            get(ingress.clone())
        })
        .await?;
        let svc = get_json(&http, &url, "/api/v1/namespaces/default/services/hello").await?;
        let cluster_ip = svc["spec"]["clusterIP"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let pods = get_json(
            &http,
            &url,
            "/api/v1/namespaces/default/pods?labelSelector=app%3Dhello",
        )
        .await?;
        let pod_ip = pods["items"][0]["status"]["podIP"]
            .as_str()
            .unwrap_or_default()
            .to_string();

        let mut rows = Vec::new();
        let mut row = |name: &str, l: &Load| {
            rows.push(format!(
                "| {name} | {:.0} | {} | {} | {} |",
                l.rps, l.p50, l.p99, l.errors
            ));
            l.rps
        };
        let via_ingress = wrk(&ingress, Some("bench.local"), &args)?;
        let ingress_rps = row(
            "wasmkube: Ingress gateway → function (in-process)",
            &via_ingress,
        );
        let via_service = wrk(&format!("http://{cluster_ip}:80/"), None, &args)?;
        row(
            "wasmkube: Service cluster IP (agent proxy) → pod",
            &via_service,
        );
        let direct = wrk(&format!("http://{pod_ip}:8080/"), None, &args)?;
        row("wasmkube: pod address", &direct);
        let mut reference = None;
        if args.wasmtime != "none" {
            let wport = free_port()?;
            let child = Command::new(&args.wasmtime)
                .args(["serve", "-Scli", "--addr", &format!("127.0.0.1:{wport}")])
                .arg(&component)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("starting {} serve", args.wasmtime))?;
            let _wasmtime = Proc(child);
            let wurl = format!("http://127.0.0.1:{wport}/");
            wait_for(60, "wasmtime serve", || get(wurl.clone())).await?;
            let w = wrk(&wurl, None, &args)?;
            reference = Some(row("wasmtime serve 48.0.8 (same component)", &w));
        }

        // activation from zero: an autoscaler that goes to zero at once when idle
        post("/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers", json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "hello"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "hello"},
                "minReplicas": 0, "maxReplicas": 1,
                "metrics": [{"type": "Pods", "pods": {"metric": {"name": "http_requests_in_flight"},
                    "target": {"type": "AverageValue", "averageValue": "100"}}}],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}}}})).await?;
        let mut activations = Vec::new();
        for _ in 0..args.activations {
            wait_for(120, "scaled to zero", || {
                let (http, url) = (http.clone(), url.clone());
                async move {
                    let d = get_json(
                        &http,
                        &url,
                        "/apis/apps/v1/namespaces/default/deployments/hello",
                    )
                    .await
                    .ok()?;
                    let p = get_json(
                        &http,
                        &url,
                        "/api/v1/namespaces/default/pods?labelSelector=app%3Dhello",
                    )
                    .await
                    .ok()?;
                    let s = get_json(&http, &url, "/api/v1/namespaces/default/services/hello")
                        .await
                        .ok()?;
                    (d["spec"]["replicas"] == 0
                        && p["items"].as_array().is_some_and(|a| a.is_empty())
                        && s["metadata"]["annotations"]["wasmkube.io/scaled-to-zero"].is_string())
                    .then_some(())
                }
            })
            .await?;
            let start = Instant::now();
            let r = http
                .get(&ingress)
                .header("host", "bench.local")
                .timeout(Duration::from_secs(60))
                .send()
                .await?;
            let took = start.elapsed();
            if r.status() != 200 {
                bail!("activation answered {}", r.status());
            }
            activations.push(took);
        }
        activations.sort();

        println!("## HTTP functions\n");
        println!("Machine: {}. `wk` release build, one node (embedded agent); load: `wrk -t2 -c{} -d{}s --latency` on the same machine.\n", machine(), args.connections, args.seconds);
        println!("| Path | Requests/s | p50 | p99 | Errors |");
        println!("|---|---|---|---|---|");
        for r in &rows {
            println!("{r}");
        }
        if let Some(w) = reference {
            println!(
                "\nIngress gateway / wasmtime serve: **{:.2}×** the requests per second.",
                ingress_rps / w
            );
        }
        if !activations.is_empty() {
            let ms = |d: &Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
            println!(
                "\nActivation from zero replicas (first request through the Ingress until its answer, {} runs): min {}, median {}, max {}.",
                activations.len(),
                ms(&activations[0]),
                ms(&activations[activations.len() / 2]),
                ms(&activations[activations.len() - 1])
            );
        }
        Ok(())
    }
}

mod lists {
    //! The cost of the representations kubectl asks for: one list of N pods
    //! as JSON, as protobuf, and as the `meta.k8s.io/v1` Table kubectl
    //! asks for; sequential requests, latency p50/p99 and bytes.

    use super::*;

    #[derive(Parser)]
    pub struct ListArgs {
        /// The wk binary.
        #[arg(long, default_value = "target/release/wk")]
        wk: PathBuf,
        /// Pods in the list.
        #[arg(long, default_value_t = 1000)]
        pods: usize,
        /// Requests per representation.
        #[arg(long, default_value_t = 200)]
        requests: usize,
    }

    fn pod(i: usize) -> Value {
        // unscheduled (another scheduler's), so the objects stay as written
        serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("bench-{i:05}"), "labels": {"app": "bench", "tier": "web", "i": i.to_string()},
                "annotations": {"note": "a pod of the list benchmark"}},
            "spec": {"schedulerName": "none", "containers": [
                {"name": "main", "image": "file:///opt/app.wasm", "args": ["--port", "8080"],
                 "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                 "ports": [{"containerPort": 8080, "name": "http"}],
                 "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}},
                {"name": "side", "image": "file:///opt/side.wasm"}]}})
    }

    pub async fn run(args: ListArgs) -> Result<()> {
        let dir = tempfile_dir()?;
        let (_proc, target) = start_wk(&args.wk, &dir, &[]).await?;
        let Target::Wk { url, http, .. } = target else {
            unreachable!()
        };
        let create = format!("{url}/api/v1/namespaces/default/pods");
        let sem = Arc::new(tokio::sync::Semaphore::new(32));
        let mut tasks = Vec::new();
        for i in 0..args.pods {
            let (http, create, sem) = (http.clone(), create.clone(), sem.clone());
            tasks.push(tokio::spawn(async move {
                let _p = sem.acquire().await;
                http.post(&create)
                    .json(&pod(i))
                    .send()
                    .await?
                    .error_for_status()?;
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let list = format!("{url}/api/v1/namespaces/default/pods");
        let kinds = [
            ("JSON", "application/json"),
            ("protobuf", "application/vnd.kubernetes.protobuf"),
            (
                "Table (JSON)",
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
            ),
        ];
        println!(
            "## Lists of {} pods: JSON, protobuf and Tables\n",
            args.pods
        );
        println!(
            "{}; `wk-bench lists --pods {} --requests {}`\n",
            machine(),
            args.pods,
            args.requests
        );
        println!("| representation | bytes | p50 ms | p99 ms |");
        println!("|---|---:|---:|---:|");
        for (name, accept) in kinds {
            let mut times = Vec::with_capacity(args.requests);
            let mut bytes = 0;
            for i in 0..args.requests + 5 {
                let t = Instant::now();
                let body = http
                    .get(&list)
                    .header("accept", accept)
                    .send()
                    .await?
                    .error_for_status()?
                    .bytes()
                    .await?;
                if i >= 5 {
                    times.push(t.elapsed());
                }
                bytes = body.len();
            }
            times.sort();
            let q = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
            println!(
                "| {name} | {bytes} | {:.2} | {:.2} |",
                q(0.5).as_secs_f64() * 1e3,
                q(0.99).as_secs_f64() * 1e3
            );
        }
        Ok(())
    }
}

mod chaos {
    //! HA under faults: three or five `wk server`s, each on its own
    //! loopback address, clients that create, update (with a
    //! resourceVersion precondition) and read a few ConfigMaps through
    //! random servers, and watchers that follow every change, while faults
    //! hit the servers: SIGKILL and restart (sometimes long enough that the
    //! server needs a snapshot), SIGSTOP and SIGCONT, and network
    //! partitions made with nftables between the servers' addresses
    //! (isolating one server or the leader, one-way drops, and a split of
    //! five into two and three). Every operation is recorded with its call
    //! and return time; at the end each key's history is checked for
    //! linearizability with [`wasmkube::lincheck`], every acknowledged
    //! create must still be there, and the watch logs are checked with
    //! [`wasmkube::lincheck::watch`].

    use super::*;
    use rand::seq::SliceRandom;
    use rand::Rng;
    use std::collections::HashMap;
    use std::net::Ipv4Addr;
    use tokio::sync::Mutex;
    use wasmkube::lincheck::watch::{self as watchcheck, Acknowledged, WatchItem};
    use wasmkube::lincheck::{self, Object, ObjectInput, ObjectOutput, Operation, Verdict};

    /// Search steps per key before a history is called undecided.
    const CHECK_STEPS: u64 = 20_000_000;

    #[derive(Parser)]
    pub struct ChaosArgs {
        /// The wk binary under test.
        #[arg(long, default_value = "target/release/wk")]
        wk: PathBuf,
        /// Fault runs (a fresh cluster each).
        #[arg(long, default_value_t = 1)]
        runs: usize,
        /// Servers per cluster: 3 or 5.
        #[arg(long, default_value_t = 3)]
        servers: usize,
        /// Seconds of workload and faults per run.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Concurrent clients.
        #[arg(long, default_value_t = 6)]
        clients: usize,
        /// ConfigMaps the clients share.
        #[arg(long, default_value_t = 4)]
        keys: usize,
        /// Watchers following every change (reconnecting to random servers).
        #[arg(long, default_value_t = 3)]
        watchers: usize,
        /// No network partitions (they need root and nftables).
        #[arg(long)]
        no_partitions: bool,
        /// No fsync failures (they need Debian's fiu-utils: the servers run
        /// under `fiu-run`, and `fiu-ctrl` makes fsync and fdatasync fail).
        #[arg(long)]
        no_fsync_faults: bool,
        /// Read with `resourceVersion=0` (any server's cache, which
        /// Kubernetes allows to be stale): shows the checker finds stale
        /// reads. Final reads stay linearizable.
        #[arg(long)]
        cache_reads: bool,
    }

    const CM: &str = "/api/v1/namespaces/default/configmaps";

    /// nftables rules that drop packets between the servers' addresses, in
    /// a table of this process's own (removed on drop).
    struct Net {
        table: String,
    }

    impl Net {
        fn nft(script: &str) -> Result<()> {
            use std::io::Write;
            let mut child = Command::new("nft")
                .args(["-f", "-"])
                .stdin(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("running nft (partitions need nftables and root; or --no-partitions)")?;
            child
                .stdin
                .take()
                .context("nft stdin")?
                .write_all(script.as_bytes())?;
            let out = child.wait_with_output()?;
            if !out.status.success() {
                bail!(
                    "nft failed: {}\n{script}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(())
        }

        fn new() -> Result<Net> {
            let table = format!("wk_chaos_{}", std::process::id());
            Self::nft(&format!(
                "table ip {table} {{\n chain input {{\n  type filter hook input priority 0; policy accept;\n }}\n}}\n"
            ))?;
            Ok(Net { table })
        }

        /// Drop every packet from `from` to `to`.
        fn drop_between(&self, pairs: &[(Ipv4Addr, Ipv4Addr)]) -> Result<()> {
            let mut script = String::new();
            for (from, to) in pairs {
                script.push_str(&format!(
                    "add rule ip {} input ip saddr {from} ip daddr {to} drop\n",
                    self.table
                ));
            }
            Self::nft(&script)
        }

        fn heal(&self) -> Result<()> {
            Self::nft(&format!("flush chain ip {} input\n", self.table))
        }
    }

    impl Drop for Net {
        fn drop(&mut self) {
            let _ = Self::nft(&format!("delete table ip {}\n", self.table));
        }
    }

    struct Cluster {
        bin: PathBuf,
        dir: PathBuf,
        addrs: Vec<Ipv4Addr>,
        ports: Vec<u16>,
        join: Vec<Vec<String>>,
        procs: Vec<Option<Child>>,
        http: reqwest::Client,
        /// Servers run under `fiu-run`, for fsync failures.
        fiu: bool,
    }

    impl Cluster {
        fn n(&self) -> usize {
            self.addrs.len()
        }

        fn url(&self, i: usize) -> String {
            format!("https://{}:{}", self.addrs[i], self.ports[i])
        }

        fn spawn(&mut self, i: usize) -> Result<()> {
            let dir = self.dir.join(format!("s{i}"));
            std::fs::create_dir_all(&dir)?;
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("server.log"))?;
            // frequent snapshots, so a server down for a few seconds
            // catches up by installing one
            let mut cmd = if self.fiu {
                let mut c = Command::new("fiu-run");
                c.arg("-x").arg("-f").arg(self.fiu_fifo(i)).arg(&self.bin);
                c
            } else {
                Command::new(&self.bin)
            };
            let child = cmd
                .args(["server", "--disable-agent", "--data-dir"])
                .arg(&dir)
                .args(["--listen", &format!("{}:{}", self.addrs[i], self.ports[i])])
                .args(["--snapshot-logs", "300", "--bookmark-interval", "1"])
                .args(&self.join[i])
                .env("WK_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {}", self.bin.display()))?;
            self.procs[i] = Some(child);
            Ok(())
        }

        /// Where `fiu-run` puts server `i`'s control pipes.
        fn fiu_fifo(&self, i: usize) -> PathBuf {
            self.dir.join(format!("s{i}")).join("fiu")
        }

        /// Make fsync and fdatasync fail (or work again) in server `i`.
        fn fsync_failures(&self, i: usize, on: bool) -> Result<()> {
            let Some(p) = &self.procs[i] else {
                return Ok(());
            };
            let verb = if on { "enable" } else { "disable" };
            let status = Command::new("fiu-ctrl")
                .arg("-c")
                .arg(format!("{verb} name=posix/io/sync/fdatasync"))
                .arg("-c")
                .arg(format!("{verb} name=posix/io/sync/fsync"))
                .arg("-f")
                .arg(self.fiu_fifo(i))
                .arg(p.id().to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .context("running fiu-ctrl (fsync faults need fiu-utils; or --no-fsync-faults)")?;
            // a server that already exited has no pipe left: nothing to do
            if !status.success() && on {
                eprintln!("fiu-ctrl {verb} on server {i}: {status}");
            }
            Ok(())
        }

        /// Start again every server that exited (as a supervisor would):
        /// a server whose store failed stops on purpose.
        fn respawn_exited(&mut self) -> Result<()> {
            for i in 0..self.n() {
                let exited = self.procs[i]
                    .as_mut()
                    .is_some_and(|p| p.try_wait().ok().flatten().is_some());
                if exited {
                    self.procs[i] = None;
                    self.spawn(i)?;
                }
            }
            Ok(())
        }

        async fn ready(&self, i: usize) -> Result<()> {
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if self
                    .http
                    .get(format!("{}/readyz", self.url(i)))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
                {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            bail!("server {i} did not become ready")
        }

        async fn start(bin: &Path, dir: &Path, n: usize, fiu: bool) -> Result<Cluster> {
            // addresses of this process's own, so concurrent runs never
            // partition each other
            let block = (std::process::id() % 250) as u8 + 1;
            let addrs: Vec<Ipv4Addr> = (0..n)
                .map(|i| Ipv4Addr::new(127, 77, block, i as u8 + 1))
                .collect();
            let ports = addrs
                .iter()
                .map(|a| Ok(std::net::TcpListener::bind((*a, 0))?.local_addr()?.port()))
                .collect::<Result<Vec<_>>>()?;
            let mut c = Cluster {
                bin: bin.to_path_buf(),
                dir: dir.to_path_buf(),
                addrs,
                ports,
                join: vec![Vec::new(); n],
                procs: (0..n).map(|_| None).collect(),
                http: reqwest::Client::new(),
                fiu,
            };
            c.spawn(0)?;
            let kubeconfig = dir.join("s0/kubeconfig.yaml");
            let deadline = Instant::now() + Duration::from_secs(60);
            let kc = loop {
                if let Ok(kc) = wasmkube::client::Kubeconfig::load(&kubeconfig) {
                    break kc;
                }
                if Instant::now() > deadline {
                    bail!("the first server wrote no kubeconfig");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            // every server's certificate comes from the same CA, and the
            // admin identity is good on all of them
            c.http = wasmkube::tls::http_client(
                kc.ca.as_deref().context("kubeconfig without a CA")?,
                kc.client_cert.as_ref(),
            )?;
            c.ready(0).await?;
            let token = std::fs::read_to_string(dir.join("s0/token"))?;
            for i in 1..n {
                c.join[i] = vec![
                    "--join".into(),
                    c.url(0),
                    "--token".into(),
                    token.trim().to_string(),
                ];
                c.spawn(i)?;
                c.ready(i).await?;
            }
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let m = members(&c.http, &c.url(0)).await?;
                let voters = m["members"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|x| x["role"] == "voter")
                    .count();
                if voters == n {
                    return Ok(c);
                }
                if Instant::now() > deadline {
                    bail!("no {n}-voter cluster: {m}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }

        /// The server the first answering server names as leader.
        async fn leader(&self) -> Option<usize> {
            for i in 0..self.n() {
                let Ok(Ok(m)) =
                    tokio::time::timeout(Duration::from_secs(1), members(&self.http, &self.url(i)))
                        .await
                else {
                    continue;
                };
                let Some(id) = m["leader"].as_u64() else {
                    continue;
                };
                let addr = m["members"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|x| x["id"].as_u64() == Some(id))
                    .and_then(|x| x["address"].as_str().map(str::to_string))?;
                return (0..self.n())
                    .find(|&j| format!("{}:{}", self.addrs[j], self.ports[j]) == addr);
            }
            None
        }

        fn signal(&self, i: usize, sig: i32) {
            if let Some(p) = &self.procs[i] {
                // SAFETY: kill(2) on a child we spawned and have not reaped
                unsafe {
                    libc::kill(p.id() as i32, sig);
                }
            }
        }

        fn kill(&mut self, i: usize) {
            if let Some(mut p) = self.procs[i].take() {
                let _ = p.kill();
                let _ = p.wait();
            }
        }
    }

    impl Drop for Cluster {
        fn drop(&mut self) {
            for i in 0..self.n() {
                self.signal(i, libc::SIGCONT);
                self.kill(i);
            }
        }
    }

    /// One fault, held for a while and then undone.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    enum Fault {
        Kill,
        /// Killed for long enough to need a snapshot on restart.
        KillLong,
        Pause,
        /// One server cut off from all others, both ways.
        Isolate,
        /// The current leader cut off from all others.
        IsolateLeader,
        /// Packets from one server to another dropped (only that way).
        OneWay,
        /// Five servers split into two and three.
        Split,
        /// fsync and fdatasync fail in one server (which then exits, and
        /// is started again).
        FsyncFail,
    }

    impl Fault {
        fn name(self) -> &'static str {
            match self {
                Fault::Kill => "kill -9",
                Fault::KillLong => "kill -9 (long)",
                Fault::Pause => "SIGSTOP",
                Fault::Isolate => "isolate a server",
                Fault::IsolateLeader => "isolate the leader",
                Fault::OneWay => "one-way drop",
                Fault::Split => "split 2/3",
                Fault::FsyncFail => "fsync failure",
            }
        }
    }

    /// Inject one fault into `cluster`, hold it for `hold`, undo it.
    async fn inject(
        cluster: &Mutex<Cluster>,
        net: Option<&Net>,
        fault: Fault,
        hold: Duration,
    ) -> Result<()> {
        let (n, addrs) = {
            let c = cluster.lock().await;
            (c.n(), c.addrs.clone())
        };
        let victim = rand::rng().random_range(0..n);
        let cut = |group: &[usize]| -> Vec<(Ipv4Addr, Ipv4Addr)> {
            let mut pairs = Vec::new();
            for &a in group {
                for b in (0..n).filter(|b| !group.contains(b)) {
                    pairs.push((addrs[a], addrs[b]));
                    pairs.push((addrs[b], addrs[a]));
                }
            }
            pairs
        };
        match fault {
            Fault::Kill | Fault::KillLong => {
                cluster.lock().await.kill(victim);
                tokio::time::sleep(hold).await;
                cluster.lock().await.spawn(victim)?;
            }
            Fault::Pause => {
                cluster.lock().await.signal(victim, libc::SIGSTOP);
                tokio::time::sleep(hold).await;
                cluster.lock().await.signal(victim, libc::SIGCONT);
            }
            Fault::FsyncFail => {
                cluster.lock().await.fsync_failures(victim, true)?;
                tokio::time::sleep(hold).await;
                cluster.lock().await.fsync_failures(victim, false)?;
            }
            Fault::Isolate | Fault::IsolateLeader | Fault::OneWay | Fault::Split => {
                let net = net.context("a partition without nftables")?;
                let pairs = match fault {
                    Fault::Isolate => cut(&[victim]),
                    Fault::IsolateLeader => {
                        let leader = cluster.lock().await.leader().await.unwrap_or(victim);
                        cut(&[leader])
                    }
                    Fault::OneWay => {
                        let other = (victim + rand::rng().random_range(1..n)) % n;
                        vec![(addrs[victim], addrs[other])]
                    }
                    _ => {
                        let mut order: Vec<usize> = (0..n).collect();
                        order.shuffle(&mut rand::rng());
                        cut(&order[..n / 2])
                    }
                };
                net.drop_between(&pairs)?;
                tokio::time::sleep(hold).await;
                net.heal()?;
            }
        }
        cluster.lock().await.respawn_exited()
    }

    /// One recorded operation on key `key`.
    struct Record {
        key: usize,
        op: Operation<ObjectInput, ObjectOutput>,
        /// A write's acknowledgement, with the version its answer carried.
        ack: Option<Acknowledged>,
    }

    fn value_of(o: &Value) -> Option<(u64, String)> {
        let v = o["data"]["v"].as_str()?.parse().ok()?;
        let rv = o["metadata"]["resourceVersion"].as_str()?.to_string();
        Some((v, rv))
    }

    /// What a client learned: per key, the last value it saw and its
    /// resourceVersion.
    type Known = HashMap<usize, (u64, String)>;

    /// Send one operation; returns its record, or None when it certainly
    /// had no effect (a 503 before any leader took it, a failed read).
    async fn one(
        http: &reqwest::Client,
        url: &str,
        key: usize,
        input: ObjectInput,
        known: &mut Known,
        t0: Instant,
        cache_read: bool,
    ) -> Option<Record> {
        let name = format!("k{key}");
        let now = || t0.elapsed().as_nanos() as u64;
        let call = now();
        let req = match &input {
            ObjectInput::Create(v) => http.post(format!("{url}{CM}")).json(&json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name}, "data": {"v": v.to_string()}})),
            ObjectInput::Update { value, .. } => {
                let rv = known
                    .get(&key)
                    .map(|(_, rv)| rv.clone())
                    .unwrap_or_default();
                http.put(format!("{url}{CM}/{name}")).json(&json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": name, "resourceVersion": rv},
                    "data": {"v": value.to_string()}}))
            }
            ObjectInput::Read if cache_read => {
                http.get(format!("{url}{CM}/{name}?resourceVersion=0"))
            }
            ObjectInput::Read => http.get(format!("{url}{CM}/{name}")),
        };
        let resp = req.timeout(Duration::from_secs(5)).send().await;
        let (code, body) = match resp {
            Ok(r) => {
                let code = r.status().as_u16();
                (Some(code), r.json::<Value>().await.unwrap_or(Value::Null))
            }
            Err(_) => (None, Value::Null),
        };
        let ret = now();
        let reason = body["reason"].as_str().unwrap_or_default();
        let mut ack = None;
        let output = match (&input, code) {
            (ObjectInput::Read, Some(200)) => value_of(&body).map(|(v, rv)| {
                known.insert(key, (v, rv));
                ObjectOutput::Value(v)
            }),
            (ObjectInput::Read, Some(404)) => Some(ObjectOutput::NotFound),
            // a failed read changed nothing: leave it out
            (ObjectInput::Read, _) => return None,
            (_, Some(503)) => return None,
            (_, Some(200 | 201)) => {
                if let Some((v, rv)) = value_of(&body) {
                    ack = rv.parse().ok().map(|revision| Acknowledged {
                        revision,
                        kind: if code == Some(201) {
                            "ADDED"
                        } else {
                            "MODIFIED"
                        }
                        .into(),
                        key: name.clone(),
                        value: Some(v.to_string()),
                    });
                    known.insert(key, (v, rv));
                }
                Some(ObjectOutput::Ok)
            }
            (ObjectInput::Create(_), Some(409)) if reason == "AlreadyExists" => {
                Some(ObjectOutput::AlreadyExists)
            }
            (ObjectInput::Update { .. }, Some(409)) if reason == "Conflict" => {
                known.remove(&key);
                Some(ObjectOutput::Conflict)
            }
            (ObjectInput::Update { .. }, Some(404)) => Some(ObjectOutput::NotFound),
            // 504, a timeout, a broken connection: may or may not have happened
            _ => None,
        };
        Some(Record {
            key,
            op: Operation {
                call,
                ret: output.map(|o| (ret, o)),
                input,
            },
            ack,
        })
    }

    /// The resourceVersion of a list of the ConfigMaps on `url`
    /// (linearizable: the cluster's revision when it was served).
    async fn list_revision(http: &reqwest::Client, url: &str) -> Option<u64> {
        let list: Value = http
            .get(format!("{url}{CM}"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success())?
            .json()
            .await
            .ok()?;
        list["metadata"]["resourceVersion"].as_str()?.parse().ok()
    }

    /// Follow every ConfigMap change, as a reflector does: list, then watch
    /// from the list's version; when a watch ends or stalls, watch again
    /// from the last delivered version on a random server; after a 410,
    /// list again. Stops once `stop` is set and it has reached `target`.
    async fn watcher(
        http: reqwest::Client,
        urls: Vec<String>,
        stop: Arc<AtomicBool>,
        target: Arc<AtomicU64>,
    ) -> Vec<WatchItem> {
        let mut log = Vec::new();
        let mut from: Option<u64> = None;
        loop {
            if stop.load(Ordering::Relaxed)
                && from.is_some_and(|f| f >= target.load(Ordering::Relaxed))
            {
                return log;
            }
            let url = urls[rand::rng().random_range(0..urls.len())].clone();
            let Some(rv) = from else {
                match list_revision(&http, &url).await {
                    Some(rv) => {
                        log.push(WatchItem::Start(rv));
                        from = Some(rv);
                    }
                    None => tokio::time::sleep(Duration::from_millis(100)).await,
                }
                continue;
            };
            let timeout = rand::rng().random_range(3..15);
            let resp = http
                .get(format!(
                    "{url}{CM}?watch=1&resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds={timeout}"
                ))
                .send()
                .await;
            let Ok(resp) = resp
                .map_err(|_| ())
                .and_then(|r| r.error_for_status().map_err(|_| ()))
            else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let mut stream = resp.bytes_stream();
            let mut buf = Vec::new();
            // bookmarks come every second: a longer silence is a stall
            while let Ok(Some(Ok(chunk))) =
                tokio::time::timeout(Duration::from_secs(3), stream.next()).await
            {
                buf.extend_from_slice(&chunk);
                while let Some(end) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=end).collect();
                    let Ok(event) = serde_json::from_slice::<Value>(&line) else {
                        continue;
                    };
                    let o = &event["object"];
                    let version = o["metadata"]["resourceVersion"]
                        .as_str()
                        .and_then(|v| v.parse::<u64>().ok());
                    match (event["type"].as_str().unwrap_or_default(), version) {
                        // 410 Gone: list again (a new segment)
                        ("ERROR", _) if o["code"] == 410 => from = None,
                        ("BOOKMARK", Some(v)) => {
                            log.push(WatchItem::Bookmark(v));
                            from = Some(v);
                        }
                        (kind, Some(v)) => {
                            log.push(WatchItem::Event(watchcheck::Event {
                                revision: v,
                                kind: kind.to_string(),
                                key: o["metadata"]["name"].as_str().unwrap_or_default().into(),
                                value: o["data"]["v"].as_str().map(str::to_string),
                            }));
                            from = Some(v);
                        }
                        _ => {}
                    }
                }
                if stop.load(Ordering::Relaxed)
                    && from.is_some_and(|f| f >= target.load(Ordering::Relaxed))
                {
                    return log;
                }
            }
        }
    }

    struct Outcome {
        ops: usize,
        unknown: usize,
        faults: HashMap<Fault, usize>,
        anomalies: Vec<usize>,
        undecided: Vec<usize>,
        lost_creates: usize,
        watch_events: usize,
        watch_problems: Vec<String>,
        /// Snapshots servers installed from the leader.
        snapshot_installs: usize,
        /// Servers that exited because their store stopped (a failed fsync).
        store_stops: usize,
    }

    /// What a server that would not serve a read answered, and what it and
    /// its peers logged and believe about the cluster; keeps the run's logs.
    async fn stuck_read(
        http: &reqwest::Client,
        url: &str,
        key: usize,
        dir: &Path,
        urls: &[String],
    ) -> String {
        let mut why = match http
            .get(format!("{url}{CM}/k{key}"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
        {
            Ok(r) => {
                let code = r.status();
                format!(
                    "its answer: {code} {}\n",
                    r.text().await.unwrap_or_default()
                )
            }
            Err(e) => format!("its answer: {e:#}\n"),
        };
        for (i, u) in urls.iter().enumerate() {
            // a server that hangs must not hang the report
            let m = tokio::time::timeout(Duration::from_secs(5), members(http, u))
                .await
                .map_err(|_| anyhow::anyhow!("no answer within 5 s"))
                .and_then(|m| m.map(|m| m.to_string()));
            why.push_str(&format!("server {i} ({u}) members: {m:?}\n"));
            let log =
                std::fs::read_to_string(dir.join(format!("s{i}/server.log"))).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            why.push_str(&format!("server {i} log, last lines:\n"));
            for l in &lines[lines.len().saturating_sub(25)..] {
                why.push_str(&format!("  {l}\n"));
            }
        }
        let keep = std::env::temp_dir().join("wk-chaos-stuck");
        let _ = std::fs::remove_dir_all(&keep);
        if std::fs::rename(dir, &keep).is_ok() {
            why.push_str(&format!("logs kept in {}\n", keep.display()));
        }
        why
    }

    /// Lines of every server log of the run that contain `needle`.
    fn count_in_logs(dir: &Path, n: usize, needle: &str) -> usize {
        (0..n)
            .filter_map(|i| std::fs::read_to_string(dir.join(format!("s{i}/server.log"))).ok())
            .map(|log| log.lines().filter(|l| l.contains(needle)).count())
            .sum()
    }

    async fn run_once(args: &ChaosArgs, dir: &Path, run: usize) -> Result<Outcome> {
        let fiu = !args.no_fsync_faults;
        let cluster = Arc::new(Mutex::new(
            Cluster::start(&args.wk, dir, args.servers, fiu).await?,
        ));
        let net = if args.no_partitions {
            None
        } else {
            Some(Arc::new(Net::new()?))
        };
        let (http, urls) = {
            let c = cluster.lock().await;
            (
                c.http.clone(),
                (0..c.n()).map(|i| c.url(i)).collect::<Vec<_>>(),
            )
        };
        let t0 = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let watch_stop = Arc::new(AtomicBool::new(false));
        let watch_target = Arc::new(AtomicU64::new(u64::MAX));
        let watchers: Vec<_> = (0..args.watchers)
            .map(|_| {
                tokio::spawn(watcher(
                    http.clone(),
                    urls.clone(),
                    watch_stop.clone(),
                    watch_target.clone(),
                ))
            })
            .collect();
        let mut clients = Vec::new();
        for client in 0..args.clients {
            let (http, urls, stop, keys) = (http.clone(), urls.clone(), stop.clone(), args.keys);
            let cache_reads = args.cache_reads;
            clients.push(tokio::spawn(async move {
                let mut known = Known::new();
                let mut records = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let (key, server, pick) = {
                        let mut rng = rand::rng();
                        (
                            rng.random_range(0..keys),
                            rng.random_range(0..urls.len()),
                            rng.random_range(0..10),
                        )
                    };
                    n += 1;
                    let fresh = ((client as u64 + 1) << 32) | n;
                    let input = match known.get(&key) {
                        Some((v, _)) if pick < 4 => ObjectInput::Update {
                            expect: *v,
                            value: fresh,
                        },
                        _ if pick < 7 => ObjectInput::Read,
                        _ => ObjectInput::Create(fresh),
                    };
                    if let Some(r) = one(
                        &http,
                        &urls[server],
                        key,
                        input,
                        &mut known,
                        t0,
                        cache_reads,
                    )
                    .await
                    {
                        records.push(r);
                    } else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                records
            }));
        }
        // one fault at a time, so a quorum is usually up
        let mut kinds = vec![Fault::Kill, Fault::KillLong, Fault::Pause];
        if fiu {
            kinds.push(Fault::FsyncFail);
        }
        if net.is_some() {
            kinds.extend([Fault::Isolate, Fault::IsolateLeader, Fault::OneWay]);
            if args.servers >= 5 {
                kinds.push(Fault::Split);
            }
        }
        let faults = {
            let (cluster, stop, net) = (cluster.clone(), stop.clone(), net.clone());
            tokio::spawn(async move {
                let mut count: HashMap<Fault, usize> = HashMap::new();
                while !stop.load(Ordering::Relaxed) {
                    let (wait, fault, hold) = {
                        let mut rng = rand::rng();
                        let fault = kinds[rng.random_range(0..kinds.len())];
                        let hold = if fault == Fault::KillLong {
                            rng.random_range(4000..8000)
                        } else {
                            rng.random_range(500..3000)
                        };
                        (rng.random_range(1000..3000), fault, hold)
                    };
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    *count.entry(fault).or_default() += 1;
                    inject(&cluster, net.as_deref(), fault, Duration::from_millis(hold)).await?;
                }
                anyhow::Ok(count)
            })
        };
        eprintln!(
            "run {run}: {} servers up, workload and faults for {} s",
            args.servers, args.seconds
        );
        tokio::time::sleep(Duration::from_secs(args.seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let faults = faults.await??;
        let mut records = Vec::new();
        for c in clients {
            records.extend(c.await?);
        }
        // heal: no partition, every server running and ready, then read
        // every key on every server (linearizable reads) as part of the
        // history
        if let Some(net) = &net {
            net.heal()?;
        }
        {
            let mut c = cluster.lock().await;
            for i in 0..c.n() {
                c.signal(i, libc::SIGCONT);
                c.fsync_failures(i, false)?;
                if c.procs[i].is_none() {
                    c.spawn(i)?;
                }
            }
            c.respawn_exited()?;
            for i in 0..c.n() {
                c.ready(i).await?;
            }
        }
        let mut known = Known::new();
        for key in 0..args.keys {
            for url in &urls {
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    if let Some(r) =
                        one(&http, url, key, ObjectInput::Read, &mut known, t0, false).await
                    {
                        if r.op.ret.is_some() {
                            records.push(r);
                            break;
                        }
                    }
                    if Instant::now() > deadline {
                        let why = stuck_read(&http, url, key, dir, &urls).await;
                        bail!("run {run}: no final read of k{key} on {url} within 30 s of healing\n{why}");
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        // every watcher must catch up with the cluster's revision now
        let mut target = 0;
        for url in &urls {
            target = target.max(list_revision(&http, url).await.unwrap_or(0));
        }
        watch_target.store(target, Ordering::Relaxed);
        watch_stop.store(true, Ordering::Relaxed);
        let mut watch_logs = Vec::new();
        let mut watch_problems = Vec::new();
        for (w, handle) in watchers.into_iter().enumerate() {
            match tokio::time::timeout(Duration::from_secs(60), handle).await {
                Ok(log) => watch_logs.push(log?),
                Err(_) => watch_problems.push(format!(
                    "watcher {w} did not reach resourceVersion {target} within 60 s of healing"
                )),
            }
        }
        eprintln!("run {run}: healed, final reads done, checking");
        let acked: Vec<Acknowledged> = records.iter().filter_map(|r| r.ack.clone()).collect();
        watch_problems.extend(watchcheck::check(&watch_logs, &acked));
        let watch_events = watch_logs
            .iter()
            .flatten()
            .filter(|i| matches!(i, WatchItem::Event(_)))
            .count();
        let ops = records.len();
        let unknown = records.iter().filter(|r| r.op.ret.is_none()).count();
        let mut by_key: Vec<Vec<Operation<ObjectInput, ObjectOutput>>> =
            (0..args.keys).map(|_| Vec::new()).collect();
        for r in records {
            by_key[r.key].push(r.op);
        }
        let mut anomalies = Vec::new();
        let mut undecided = Vec::new();
        let mut lost_creates = 0;
        for (key, ops) in by_key.iter().enumerate() {
            match lincheck::check_within(&Object, ops, CHECK_STEPS) {
                Verdict::Linearizable => {}
                Verdict::NotLinearizable => anomalies.push(key),
                Verdict::Undecided => undecided.push(key),
            }
            let acked = ops.iter().any(|o| {
                matches!(o.input, ObjectInput::Create(_))
                    && matches!(o.ret, Some((_, ObjectOutput::Ok)))
            });
            let gone = !known.contains_key(&key);
            if acked && gone {
                lost_creates += 1;
            }
        }
        let snapshot_installs =
            count_in_logs(dir, args.servers, "installing a snapshot from the leader");
        let store_stops = count_in_logs(dir, args.servers, "the store stopped: exiting");
        for p in watch_problems.iter().take(20) {
            eprintln!("run {run}: watch: {p}");
        }
        if !anomalies.is_empty() || !undecided.is_empty() || !watch_problems.is_empty() {
            // keep the logs of a run that found something
            let keep = std::env::temp_dir().join(format!("wk-chaos-run-{run}"));
            let _ = std::fs::remove_dir_all(&keep);
            let _ = std::fs::rename(dir, &keep);
            eprintln!("run {run}: logs kept in {}", keep.display());
        }
        Ok(Outcome {
            ops,
            unknown,
            faults,
            anomalies,
            undecided,
            lost_creates,
            watch_events,
            watch_problems,
            snapshot_installs,
            store_stops,
        })
    }

    pub async fn run(args: ChaosArgs) -> Result<()> {
        if args.servers != 3 && args.servers != 5 {
            bail!("--servers must be 3 or 5");
        }
        let tmp = tempfile_dir()?;
        let (mut ops, mut unknown, mut anomalies, mut lost) = (0, 0, 0, 0);
        let (mut undecided, mut watch_events, mut watch_problems) = (0, 0, 0);
        let (mut snapshot_installs, mut store_stops) = (0, 0);
        let mut faults: HashMap<Fault, usize> = HashMap::new();
        for run in 0..args.runs {
            let dir = tmp.join(format!("run-{run}"));
            let o = run_once(&args, &dir, run).await?;
            let nfaults: usize = o.faults.values().sum();
            eprintln!(
                "run {run}: {} operations ({} of unknown outcome), {nfaults} faults, anomalous keys {:?}, undecided keys {:?}, acknowledged creates lost {}, watch events {}, watch problems {}, snapshots installed {}, store stops {}",
                o.ops, o.unknown, o.anomalies, o.undecided, o.lost_creates, o.watch_events, o.watch_problems.len(), o.snapshot_installs, o.store_stops
            );
            undecided += o.undecided.len();
            ops += o.ops;
            unknown += o.unknown;
            for (f, n) in o.faults {
                *faults.entry(f).or_default() += n;
            }
            anomalies += o.anomalies.len();
            lost += o.lost_creates;
            watch_events += o.watch_events;
            watch_problems += o.watch_problems.len();
            snapshot_installs += o.snapshot_installs;
            store_stops += o.store_stops;
            let _ = std::fs::remove_dir_all(&dir);
        }
        let _ = std::fs::remove_dir_all(&tmp);
        let mut kinds: Vec<_> = faults.into_iter().collect();
        kinds.sort_by_key(|(f, _)| f.name());
        let kinds: Vec<String> = kinds
            .iter()
            .map(|(f, n)| format!("{} {n}", f.name()))
            .collect();
        println!("Machine: {}", machine());
        println!(
            "{} runs of {} s, {} servers, {} clients on {} keys, {} watchers",
            args.runs, args.seconds, args.servers, args.clients, args.keys, args.watchers
        );
        println!("faults: {}", kinds.join(", "));
        println!(
            "snapshots installed by restarted or cut-off servers {snapshot_installs}, servers that exited on a failed fsync {store_stops}"
        );
        println!(
            "operations {ops} ({unknown} of unknown outcome), non-linearizable keys {anomalies}, undecided keys {undecided}, acknowledged creates lost {lost}, watch events {watch_events}, watch problems {watch_problems}"
        );
        if anomalies > 0 || undecided > 0 || lost > 0 || watch_problems > 0 {
            bail!("anomalies found");
        }
        Ok(())
    }
}

mod wear {
    //! Flash wear: bytes a `wk server` (with its embedded agent) and a
    //! separate `wk agent` write to disk, from `/proc/PID/io`: idle (Lease
    //! renewals, node status, the store's own housekeeping), and per Wasm
    //! pod created, started and deleted.

    use super::*;

    #[derive(Parser)]
    pub struct WearArgs {
        /// The wk binary.
        #[arg(long, default_value = "target/release/wk")]
        wk: PathBuf,
        /// A long-running, mostly idle guest.
        #[arg(
            long,
            default_value = "examples/target/wasm32-wasip1/release/worker.wasm"
        )]
        module: PathBuf,
        /// Seconds of idle measurement (scaled to an hour).
        #[arg(long, default_value_t = 300)]
        idle_seconds: u64,
        /// Pods per create/start/delete round.
        #[arg(long, default_value_t = 100)]
        pods: usize,
    }

    /// `write_bytes` (what reached the block layer) and `wchar` (what was
    /// passed to write calls) of a process.
    #[derive(Clone, Copy, Default)]
    struct Io {
        write_bytes: u64,
        wchar: u64,
    }

    fn io(pid: u32) -> Result<Io> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/io"))
            .with_context(|| format!("reading /proc/{pid}/io"))?;
        let field = |name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        Ok(Io {
            write_bytes: field("write_bytes:"),
            wchar: field("wchar:"),
        })
    }

    fn delta(a: Io, b: Io) -> Io {
        Io {
            write_bytes: b.write_bytes.saturating_sub(a.write_bytes),
            wchar: b.wchar.saturating_sub(a.wchar),
        }
    }

    fn kib(bytes: f64) -> String {
        format!("{:.1}", bytes / 1024.0)
    }

    /// A server, and optionally a separate agent joined to it.
    struct Setup {
        server: Proc,
        agent: Option<Proc>,
        url: String,
        http: reqwest::Client,
        node: String,
    }

    async fn start(args: &WearArgs, dir: &Path, separate_agent: bool) -> Result<Setup> {
        let flags: &[&str] = if separate_agent {
            &["--disable-agent"]
        } else {
            &[]
        };
        let (server, target) = start_wk(&args.wk, &dir.join("server"), flags).await?;
        let Target::Wk { url, http, .. } = target else {
            bail!("not a wk target")
        };
        let agent = if separate_agent {
            Some(start_agent(
                &args.wk,
                &url,
                &dir.join("server/token"),
                "wear-agent",
                &dir.join("agent"),
                &[],
            )?)
        } else {
            None
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let node = loop {
            let l: Value = http
                .get(format!("{url}/api/v1/nodes"))
                .send()
                .await?
                .json()
                .await?;
            let ready = l["items"].as_array().into_iter().flatten().find(|n| {
                n["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            if let Some(n) = ready.and_then(|n| n["metadata"]["name"].as_str()) {
                break n.to_string();
            }
            if Instant::now() > deadline {
                bail!("no node became Ready");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        Ok(Setup {
            server,
            agent,
            url,
            http,
            node,
        })
    }

    impl Setup {
        fn pids(&self) -> Vec<(&'static str, u32)> {
            let mut p = vec![("wk server", self.server.0.id())];
            if let Some(a) = &self.agent {
                p.push(("wk agent", a.0.id()));
            }
            p
        }

        fn io(&self) -> Result<Vec<Io>> {
            self.pids().into_iter().map(|(_, pid)| io(pid)).collect()
        }

        async fn count(&self) -> Result<usize> {
            let l: Value = self
                .http
                .get(format!("{}/api/v1/namespaces/default/pods", self.url))
                .send()
                .await?
                .json()
                .await?;
            Ok(l["items"].as_array().into_iter().flatten().count())
        }

        /// Pods whose containers all run (not waiting in a back-off).
        async fn running(&self) -> Result<usize> {
            let l: Value = self
                .http
                .get(format!("{}/api/v1/namespaces/default/pods", self.url))
                .send()
                .await?
                .json()
                .await?;
            let mut n = 0;
            for p in l["items"].as_array().into_iter().flatten() {
                let statuses = p["status"]["containerStatuses"].as_array();
                if statuses.is_some_and(|s| s.iter().any(|c| c["restartCount"].as_u64() > Some(0)))
                {
                    bail!("a pod's container restarted: {}", p["status"]);
                }
                if statuses.is_some_and(|s| {
                    !s.is_empty() && s.iter().all(|c| c["state"]["running"].is_object())
                }) {
                    n += 1;
                }
            }
            Ok(n)
        }

        /// Create `n` pods, wait until all run, delete them, wait until
        /// they are gone.
        async fn pod_round(&self, image: &str, n: usize) -> Result<()> {
            let pods = format!("{}/api/v1/namespaces/default/pods", self.url);
            for i in 0..n {
                let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("wear-{i}")},
                    "spec": {"nodeName": self.node, "volumes": [{"name": "data", "emptyDir": {}}],
                        "containers": [{"name": "w", "image": image, "args": ["0", "3600000"],
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}});
                let r = self.http.post(&pods).json(&pod).send().await?;
                if !r.status().is_success() {
                    bail!("creating a pod: {}", r.text().await.unwrap_or_default());
                }
            }
            let deadline = Instant::now() + Duration::from_secs(600);
            while self.running().await? < n {
                if Instant::now() > deadline {
                    bail!("pods did not start");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            for i in 0..n {
                self.http.delete(format!("{pods}/wear-{i}")).send().await?;
            }
            while self.count().await? > 0 {
                if Instant::now() > deadline {
                    bail!("pods were not deleted");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            // let the last status writes and log files settle
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(())
        }
    }

    pub async fn run(args: WearArgs) -> Result<()> {
        let module = std::fs::read(&args.module).with_context(|| {
            format!(
                "reading {} (build the examples first)",
                args.module.display()
            )
        })?;
        let tmp = tempfile_dir()?;
        let image = tmp.join("worker.wasm");
        std::fs::write(&image, &module)?;
        let image = format!("file://{}", image.display());
        let mut rows = Vec::new();
        let setups = [
            ("`wk server` (embedded agent)", false),
            ("`wk server --disable-agent` + `wk agent`", true),
        ];
        let mut started = Vec::new();
        for (i, (label, separate)) in setups.iter().enumerate() {
            started.push((
                *label,
                start(&args, &tmp.join(format!("s{i}")), *separate).await?,
            ));
        }
        // settle: start-up writes (certificates, first snapshot) are not idle
        tokio::time::sleep(Duration::from_secs(30)).await;
        let before: Vec<Vec<Io>> = started.iter().map(|(_, s)| s.io()).collect::<Result<_>>()?;
        eprintln!("idle for {} s", args.idle_seconds);
        tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
        let scale = 3600.0 / args.idle_seconds as f64;
        let mut memory = Vec::new();
        for ((label, s), before) in started.iter().zip(&before) {
            for (name, pid) in s.pids() {
                memory.push(format!(
                    "| {label} | {name} | {:.1} |",
                    super::pods::rss_kib(pid) as f64 / 1024.0
                ));
            }
            let after = s.io()?;
            for (((name, _), a), b) in s.pids().iter().zip(before).zip(&after) {
                let d = delta(*a, *b);
                rows.push(format!(
                    "| {label} | {name} | idle, per hour | {} | {} |",
                    kib(d.write_bytes as f64 * scale),
                    kib(d.wchar as f64 * scale)
                ));
            }
        }
        for (label, s) in &started {
            // a first round compiles the module and warms the caches
            s.pod_round(&image, 5).await?;
            let a = s.io()?;
            s.pod_round(&image, args.pods).await?;
            let b = s.io()?;
            for (((name, _), a), b) in s.pids().iter().zip(&a).zip(&b) {
                let d = delta(*a, *b);
                rows.push(format!(
                    "| {label} | {name} | per pod created, started and deleted | {} | {} |",
                    kib(d.write_bytes as f64 / args.pods as f64),
                    kib(d.wchar as f64 / args.pods as f64)
                ));
            }
        }
        drop(started);
        let _ = std::fs::remove_dir_all(&tmp);
        println!("Machine: {}", machine());
        println!(
            "Idle window {} s (scaled to an hour), {} pods per round, heartbeat and Lease renewal every 10 s (the default)\n",
            args.idle_seconds, args.pods
        );
        println!("| setup | process | what | KiB written to disk (write_bytes) | KiB passed to write() (wchar) |");
        println!("|---|---|---|---|---|");
        for r in rows {
            println!("{r}");
        }
        println!("\nIdle RSS at the end of the idle window (no pods):\n");
        println!("| setup | process | RSS MiB |\n|---|---|---|");
        for r in memory {
            println!("{r}");
        }
        Ok(())
    }
}

mod schedule {
    //! What the scheduler's decision costs without the API around it: the
    //! same pure function and placement cache the scheduler runs, pods
    //! placed one after another as its one worker does.

    use super::*;
    use wasmkube::controllers::scheduler::{self, Claims, NodeInfo, Placement, Strategy};

    #[derive(Parser)]
    pub struct ScheduleArgs {
        /// Nodes (as the hollow ones: 4 CPUs, 8 GiB, 110 pods).
        #[arg(long, default_value_t = 5000)]
        nodes: usize,
        /// Pods to place.
        #[arg(long, default_value_t = 50000)]
        pods: usize,
    }

    pub fn run(args: ScheduleArgs) -> Result<()> {
        let nodes: Vec<NodeInfo> = (0..args.nodes)
            .map(|i| {
                let name = format!("hollow-{i}");
                NodeInfo::from_node(
                    &json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
                    "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                        "conditions": [{"type": "Ready", "status": "True"}]}}),
                )
            })
            .collect();
        let mut placement = Placement::default();
        let mut start = 0;
        let mut took = Histogram::<u64>::new(3)?;
        let t = Instant::now();
        for i in 0..args.pods {
            let pod = Arc::new(
                json!({"metadata": {"name": format!("p-{i}"), "namespace": "default", "uid": format!("uid-{i}")},
                "spec": {"containers": [{"name": "c", "image": "example.test/app:1",
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}),
            );
            let t0 = Instant::now();
            let choice = scheduler::schedule_with_claims(
                &pod,
                &nodes,
                &placement,
                Strategy::default(),
                &Claims::new(),
                start,
            )
            .map_err(anyhow::Error::msg)?;
            start = (start + choice.examined) % nodes.len();
            placement.assume(&pod, &choice.node);
            took.record(t0.elapsed().as_nanos() as u64)?;
        }
        let all = t.elapsed().as_secs_f64();
        println!("Machine: {}", machine());
        println!(
            "- {} pods on {} nodes ({} looked at per pod): **{:.0} decisions/s**, p50 {:.0} µs, p99 {:.0} µs",
            args.pods,
            args.nodes,
            scheduler::nodes_to_find(args.nodes),
            args.pods as f64 / all,
            took.value_at_quantile(0.5) as f64 / 1000.0,
            took.value_at_quantile(0.99) as f64 / 1000.0,
        );
        Ok(())
    }
}

mod hollow {
    //! The control plane at many nodes, as kubemark measures it: hollow
    //! nodes (in this process) register, hold Leases and renew them every
    //! 10 s like agents, but run nothing. Then pods are created through the
    //! API and the time until the scheduler has bound every one is
    //! measured; then a list of every pod, and the server's memory.

    use super::*;

    #[derive(Parser)]
    pub struct HollowArgs {
        /// The wk binary.
        #[arg(long, default_value = "target/release/wk")]
        wk: PathBuf,
        /// Hollow nodes.
        #[arg(long, default_value_t = 5000)]
        nodes: usize,
        /// Pods to schedule.
        #[arg(long, default_value_t = 10000)]
        pods: usize,
        /// Concurrent API clients creating nodes and pods.
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// One more argument for `wk server` (repeatable), e.g.
        /// `--server-arg=--watch-history=5000`.
        #[arg(long, allow_hyphen_values = true)]
        server_arg: Vec<String>,
    }

    const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";

    fn micro_now() -> String {
        chrono::Utc::now()
            .format("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string()
    }

    fn rss_mib(pid: u32) -> f64 {
        super::pods::rss_kib(pid) as f64 / 1024.0
    }

    /// CPU seconds (user and system) process `pid` has used: a measure of
    /// the work done that a busy or shared machine disturbs far less than
    /// the wall clock.
    fn cpu_s(pid: u32) -> Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // the fields after the command name, which is in parentheses
        let rest = stat.rsplit_once(')').context("malformed /proc/PID/stat")?.1;
        let field = |i: usize| -> Result<f64> {
            Ok(rest
                .split_whitespace()
                .nth(i)
                .context("short /proc/PID/stat")?
                .parse::<f64>()?)
        };
        // utime and stime: fields 14 and 15, counted from the state (3)
        // SAFETY: sysconf(3) takes no pointers
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        Ok((field(11)? + field(12)?) / ticks)
    }

    pub async fn run(args: HollowArgs) -> Result<()> {
        let tmp = tempfile_dir()?;
        let mut server_args = vec!["--disable-agent", "--max-pods", "110"];
        server_args.extend(args.server_arg.iter().map(String::as_str));
        let (server, target) = start_wk(&args.wk, &tmp.join("server"), &server_args).await?;
        let Target::Wk { url, http, .. } = target else {
            bail!("not a wk target")
        };
        let pid = server.0.id();
        let mut out = Vec::new();

        // register the hollow nodes and their Leases
        let t = Instant::now();
        let results = futures::stream::iter(0..args.nodes)
            .map(|i| {
                let (http, url) = (http.clone(), url.clone());
                async move {
                    let name = format!("hollow-{i}");
                    let node = json!({"apiVersion": "v1", "kind": "Node",
                        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
                        "status": {"capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                            "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                "lastHeartbeatTime": meta_now(), "lastTransitionTime": meta_now()}]}});
                    let r = http.post(format!("{url}/api/v1/nodes")).json(&node).send().await?;
                    let (status, body) = (r.status(), r.text().await?);
                    if !status.is_success() {
                        bail!("registering {name}: {body}");
                    }
                    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name},
                        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": micro_now()}});
                    let r = http.post(format!("{url}{LEASES}")).json(&lease).send().await?;
                    let (status, body) = (r.status(), r.text().await?);
                    if !status.is_success() {
                        bail!("lease of {name}: {body}");
                    }
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(args.clients)
            .collect::<Vec<_>>()
            .await;
        for r in results {
            r?;
        }
        out.push(format!(
            "- registered {} hollow nodes with Leases in {:.1} s",
            args.nodes,
            t.elapsed().as_secs_f64()
        ));

        // heartbeats: every node renews its Lease every 10 s, spread evenly,
        // over HTTP/1.1 connections of their own (as separate agents would
        // be: hundreds of renewals on the one HTTP/2 connection of the pod
        // creators ended it with "too_many_internal_resets")
        let kc = wasmkube::client::Kubeconfig::load(&tmp.join("server/kubeconfig.yaml"))?;
        let beat_http = wasmkube::tls::http1_client(
            kc.ca.as_deref().context("kubeconfig without a CA")?,
            kc.client_cert.as_ref(),
        )?;
        let stop = Arc::new(AtomicBool::new(false));
        let renewals = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new(3)?));
        let late = Arc::new(AtomicU64::new(0));
        let beats = {
            let (http, url, stop, renewals, late) = (
                beat_http,
                url.clone(),
                stop.clone(),
                renewals.clone(),
                late.clone(),
            );
            let nodes = args.nodes;
            tokio::spawn(async move {
                let period = Duration::from_secs(10);
                let gap = period / nodes as u32;
                let mut tick = tokio::time::interval(gap);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let inflight = Arc::new(tokio::sync::Semaphore::new(256));
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let Ok(permit) = inflight.clone().try_acquire_owned() else {
                        // the server is not keeping up: this renewal is late
                        late.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let (http, url, renewals) = (http.clone(), url.clone(), renewals.clone());
                    let name = format!("hollow-{}", i % nodes);
                    i += 1;
                    tokio::spawn(async move {
                        let t = Instant::now();
                        let r = http
                            .patch(format!("{url}{LEASES}/{name}"))
                            .header("content-type", "application/merge-patch+json")
                            .body(json!({"spec": {"renewTime": micro_now()}}).to_string())
                            .send()
                            .await;
                        // the body is read, as an agent does (see `Target::write`)
                        let ok = match r {
                            Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                            _ => false,
                        };
                        if ok {
                            let _ = renewals
                                .lock()
                                .unwrap()
                                .record(t.elapsed().as_micros() as u64);
                        }
                        drop(permit);
                    });
                }
            })
        };

        // let the heartbeat load settle, then schedule the pods
        tokio::time::sleep(Duration::from_secs(15)).await;
        let bound = Arc::new(AtomicU64::new(0));
        let all_bound = Arc::new(tokio::sync::Notify::new());
        // when the first and the last binding were seen
        let bindings: Arc<std::sync::Mutex<Option<(Instant, Instant)>>> = Arc::default();
        {
            let (bound, all_bound, n) = (bound.clone(), all_bound.clone(), args.pods as u64);
            let bindings = bindings.clone();
            let mut seen = std::collections::HashSet::new();
            watch_objects(&http, &url, "/api/v1/namespaces/default/pods", move |o| {
                if o["spec"]["nodeName"].is_string() {
                    let name = o["metadata"]["name"].as_str().unwrap_or_default();
                    if seen.insert(name.to_string()) {
                        let now = Instant::now();
                        let mut b = bindings.lock().unwrap();
                        *b = Some((b.map_or(now, |(first, _)| first), now));
                        if bound.fetch_add(1, Ordering::Relaxed) + 1 == n {
                            all_bound.notify_one();
                        }
                    }
                }
            })
            .await?;
        }
        let t = Instant::now();
        let cpu_before = cpu_s(pid)?;
        let created = futures::stream::iter(0..args.pods)
            .map(|i| {
                let (http, url) = (http.clone(), url.clone());
                async move {
                    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("p-{i}")},
                        "spec": {"containers": [{"name": "c", "image": "example.test/app:1",
                            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}});
                    let r = http
                        .post(format!("{url}/api/v1/namespaces/default/pods"))
                        .json(&pod)
                        .send()
                        .await?;
                    anyhow::ensure!(r.status().is_success(), "creating a pod: {}", r.status());
                    r.bytes().await?;
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(args.clients)
            .collect::<Vec<_>>()
            .await;
        for r in created {
            r?;
        }
        let create_s = t.elapsed().as_secs_f64();
        if tokio::time::timeout(Duration::from_secs(1800), all_bound.notified())
            .await
            .is_err()
        {
            bail!(
                "only {} of {} pods were bound within 30 minutes",
                bound.load(Ordering::Relaxed),
                args.pods
            );
        }
        let all_s = t.elapsed().as_secs_f64();
        let cpu = cpu_s(pid)? - cpu_before;
        let (first, last) = bindings.lock().unwrap().expect("every pod was bound");
        out.push(format!(
            "- {} pods created in {create_s:.1} s ({:.0}/s); all bound {all_s:.1} s after the first create: **{:.0} pods/s** end to end; bindings {:.0}/s (first to last)",
            args.pods,
            args.pods as f64 / create_s,
            args.pods as f64 / all_s,
            (args.pods - 1) as f64 / (last - first).as_secs_f64().max(1e-3)
        ));
        out.push(format!(
            "- wk server CPU from the first create to the last binding: {cpu:.1} s, **{:.2} ms per pod** ({:.0}% of one core; the Lease renewals included)",
            cpu * 1000.0 / args.pods as f64,
            cpu * 100.0 / all_s
        ));
        stop.store(true, Ordering::Relaxed);
        beats.await?;
        {
            let h = renewals.lock().unwrap();
            out.push(format!(
                "- Lease renewals while scheduling: {} done at {:.0}/s (target {:.0}/s), {} skipped as late, p50 {} p99 {}",
                h.len(),
                h.len() as f64 / (all_s + 15.0),
                args.nodes as f64 / 10.0,
                late.load(Ordering::Relaxed),
                ms(h.value_at_quantile(0.5)),
                ms(h.value_at_quantile(0.99)),
            ));
        }
        let t = Instant::now();
        let list = http
            .get(format!("{url}/api/v1/pods"))
            .send()
            .await?
            .bytes()
            .await?;
        out.push(format!(
            "- list of all {} pods: {:.0} ms, {:.1} MiB of JSON",
            args.pods,
            t.elapsed().as_secs_f64() * 1000.0,
            list.len() as f64 / 1048576.0
        ));
        out.push(format!(
            "- wk server RSS with {} nodes and {} pods: {:.0} MiB",
            args.nodes,
            args.pods,
            rss_mib(pid)
        ));
        drop(server);
        let _ = std::fs::remove_dir_all(&tmp);
        println!("Machine: {}", machine());
        for l in out {
            println!("{l}");
        }
        Ok(())
    }

    fn meta_now() -> String {
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
    }
}
