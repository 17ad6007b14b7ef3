//! High availability: three `wk server`s in one Raft cluster. Servers join
//! with the first one's token; any server takes writes (forwarded to the
//! leader) and serves linearizable reads; the cluster keeps going when its
//! leader is killed; a restarted server uses its stored membership; a
//! removed server stops. Everything through the real kubectl with each
//! server's own kubeconfig, and `wk cluster`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::util::{eventually, free_port, stderr, stdout, wk, Server};

/// Flags every server of one cluster shares: a fixed address (the Raft
/// address must survive restarts), the same Service and pod ranges, no
/// embedded agent (three on one machine would share its host name).
fn flags(port: u16, cidrs: &[String]) -> Vec<String> {
    let mut f = vec![
        "--listen".to_string(),
        format!("127.0.0.1:{port}"),
        "--disable-agent".into(),
    ];
    f.extend(cidrs.iter().cloned());
    f
}

async fn start(port: u16, cidrs: &[String], join: Option<&Server>) -> Server {
    start_with(port, cidrs, join, &[]).await
}

/// [`start`] with more flags.
async fn start_with(port: u16, cidrs: &[String], join: Option<&Server>, extra: &[&str]) -> Server {
    let mut b = Server::builder();
    for f in flags(port, cidrs) {
        b = b.arg(&f);
    }
    for f in extra {
        b = b.arg(f);
    }
    if let Some(first) = join {
        b = b
            .arg("--join")
            .arg(&first.url)
            .arg("--token")
            .arg(&first.join_token);
    }
    b.start().await
}

fn members(s: &Server) -> Value {
    let out = wk(&[
        "cluster",
        "members",
        "--kubeconfig",
        s.kubeconfig().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let rows: Vec<Value> = text
        .lines()
        .skip(1)
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            json!({"id": cols[0], "address": cols[1], "role": cols[2], "leader": cols.get(3) == Some(&"*")})
        })
        .collect();
    json!(rows)
}

fn kubectl_ok(s: &Server, args: &[&str]) -> String {
    let out = s.kubectl(args);
    assert!(
        out.status.success(),
        "kubectl {args:?} on {}: {}",
        s.url,
        stderr(&out)
    );
    stdout(&out)
}

fn configmap(name: &str, value: &str) -> String {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"v": value}})
        .to_string()
}

fn create(s: &Server, name: &str) -> std::process::Output {
    crate::util::kubectl_stdin(
        &s.kubeconfig(),
        &["create", "-f", "-"],
        Some(&configmap(name, name)),
    )
}

/// Service and pod ranges of this test's own, the same on every server of
/// its cluster.
fn cluster_cidrs() -> Vec<String> {
    let r: u32 = rand::random_range(0..512);
    let svc =
        std::net::Ipv4Addr::from_bits(std::net::Ipv4Addr::new(127, 32, 0, 0).to_bits() + (r << 12));
    let pods = std::net::Ipv4Addr::from_bits(
        std::net::Ipv4Addr::new(127, 64, 0, 0).to_bits() + ((r % 256) << 14),
    );
    vec![
        "--service-cidr".to_string(),
        format!("{svc}/20"),
        "--cluster-cidr".into(),
        format!("{pods}/18"),
        "--node-cidr-mask-size".into(),
        "22".into(),
    ]
}

fn voters(m: &Value) -> usize {
    m.as_array()
        .unwrap()
        .iter()
        .filter(|x| x["role"] == "voter")
        .count()
}

/// The index of the server `m` names as leader.
fn leader_of(m: &Value, servers: &[Server]) -> usize {
    let addr = m
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["leader"] == true)
        .unwrap_or_else(|| panic!("no leader in {m}"))["address"]
        .as_str()
        .unwrap()
        .to_string();
    servers
        .iter()
        .position(|s| s.url.ends_with(&addr))
        .expect("the leader is one of ours")
}

/// A server that was down while the others wrote megabytes and purged
/// their log behind a snapshot catches up from that snapshot, sent in
/// chunks of megabytes, and then serves what was written.
#[tokio::test]
async fn a_server_left_behind_catches_up_from_a_snapshot_of_megabytes() {
    let cidrs = cluster_cidrs();
    let ports = [free_port(), free_port(), free_port()];
    // a snapshot (and a purge of the log behind it) every 20 entries
    let every_20 = ["--snapshot-logs", "20"];
    let a = start_with(ports[0], &cidrs, None, &every_20).await;
    let b = start_with(ports[1], &cidrs, Some(&a), &every_20).await;
    let c = start_with(ports[2], &cidrs, Some(&a), &every_20).await;
    let mut servers = vec![a, b, c];
    let m = eventually(60, "three voters", || async {
        let m = members(&servers[0]);
        (voters(&m) == 3).then_some(m)
    })
    .await;

    // a follower goes down; the others write 30 ConfigMaps of 200 KB
    let down = (leader_of(&m, &servers) + 1) % 3;
    let up = (down + 1) % 3;
    servers[down].kill9();
    let big = "x".repeat(200 * 1024);
    for i in 0..30 {
        let name = format!("big-{i}");
        let out = crate::util::kubectl_stdin(
            &servers[up].kubeconfig(),
            &["create", "-f", "-"],
            Some(
                &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
                "data": {"v": name, "big": big}})
                .to_string(),
            ),
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }

    // it comes back behind the purged log: only the snapshot (6 MB and
    // more) brings it up to date, and then it serves the last write
    servers[down].restart().await;
    eventually(
        120,
        "the server left behind serves the last write",
        || async {
            let out =
                servers[down].kubectl(&["get", "configmap", "big-29", "-o", "jsonpath={.data.v}"]);
            (out.status.success() && stdout(&out) == "big-29").then_some(())
        },
    )
    .await;
    let v = kubectl_ok(
        &servers[down],
        &["get", "configmap", "big-0", "-o", "jsonpath={.data.v}"],
    );
    assert_eq!(v, "big-0");
}

#[tokio::test]
async fn five_servers_keep_going_after_losing_two() {
    let cidrs = cluster_cidrs();
    let first = start(free_port(), &cidrs, None).await;
    let mut servers = vec![first];
    for _ in 1..5 {
        let s = start(free_port(), &cidrs, Some(&servers[0])).await;
        servers.push(s);
    }
    let m = eventually(120, "five voters", || async {
        let m = members(&servers[4]);
        (voters(&m) == 5).then_some(m)
    })
    .await;
    let out = create(&servers[3], "before");
    assert!(out.status.success(), "{}", stderr(&out));

    // kill -9 the leader and one follower: three of five are a quorum
    let li = leader_of(&m, &servers);
    let other = (li + 1) % 5;
    servers[li].kill9();
    servers[other].kill9();
    let survivors: Vec<usize> = (0..5).filter(|i| *i != li && *i != other).collect();
    for (n, i) in survivors.iter().enumerate() {
        let name = format!("after-losing-two-{n}");
        eventually(60, "a survivor takes writes", || async {
            let out = create(&servers[*i], &name);
            (out.status.success() || stderr(&out).contains("already exists")).then_some(())
        })
        .await;
    }
    let m = members(&servers[survivors[0]]);
    assert!(
        m.as_array().unwrap().iter().any(|x| x["leader"] == true),
        "a new leader among the survivors: {m}"
    );

    // the two come back from their stored membership and catch up
    servers[li].restart().await;
    servers[other].restart().await;
    for i in [li, other] {
        for name in ["before", "after-losing-two-0", "after-losing-two-2"] {
            let v = kubectl_ok(
                &servers[i],
                &["get", "configmap", name, "-o", "jsonpath={.data.v}"],
            );
            assert_eq!(v, name);
        }
    }
    let m = members(&servers[li]);
    assert_eq!(voters(&m), 5, "{m}");
}

/// `wk snapshot restore` starts a new one-server cluster from a snapshot;
/// other servers join it as they join any cluster.
#[tokio::test]
async fn a_restored_snapshot_starts_a_cluster_others_can_join() {
    let cidrs = cluster_cidrs();
    let mut old = start(free_port(), &cidrs, None).await;
    for i in 0..5 {
        let out = create(&old, &format!("saved-{i}"));
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("snap.json");
    let out = wk(&[
        "snapshot",
        "save",
        file.to_str().unwrap(),
        "--kubeconfig",
        old.kubeconfig().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // the old cluster is gone; its keys and identity go with the snapshot
    assert!(old.terminate());
    let restored = work.path().join("restored");
    crate::util::copy_cluster_keys(&old.dir, &restored);
    let out = wk(&[
        "snapshot",
        "restore",
        file.to_str().unwrap(),
        "--data-dir",
        restored.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    let mut b = Server::builder().data_dir(&restored);
    for f in flags(free_port(), &cidrs) {
        b = b.arg(&f);
    }
    let first = b.start().await;
    let joiner = start(free_port(), &cidrs, Some(&first)).await;
    let servers = [first, joiner];
    eventually(60, "two voters", || async {
        (voters(&members(&servers[1])) == 2).then_some(())
    })
    .await;
    // the joiner has what the snapshot held, and takes writes
    for i in 0..5 {
        let name = format!("saved-{i}");
        let v = kubectl_ok(
            &servers[1],
            &["get", "configmap", &name, "-o", "jsonpath={.data.v}"],
        );
        assert_eq!(v, name);
    }
    let out = create(&servers[1], "after-restore");
    assert!(out.status.success(), "{}", stderr(&out));
    kubectl_ok(&servers[0], &["get", "configmap", "after-restore"]);
}

#[tokio::test]
async fn three_servers_take_writes_anywhere_and_survive_losing_the_leader() {
    let cidrs = cluster_cidrs();
    let ports = [free_port(), free_port(), free_port()];
    let a = start(ports[0], &cidrs, None).await;
    let out = create(&a, "before-join");
    assert!(out.status.success(), "{}", stderr(&out));
    let b = start(ports[1], &cidrs, Some(&a)).await;
    let c = start(ports[2], &cidrs, Some(&a)).await;
    let mut servers = vec![a, b, c];

    // three voters, one leader, the same view from every server
    let m = eventually(60, "three voters", || async {
        let m = members(&servers[2]);
        let voters = m
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["role"] == "voter")
            .count();
        (voters == 3).then_some(m)
    })
    .await;
    assert_eq!(
        m.as_array()
            .unwrap()
            .iter()
            .filter(|x| x["leader"] == true)
            .count(),
        1,
        "{m}"
    );

    // what was written before the join is on the joiners; a write on a
    // follower is forwarded, and read back at once on another server
    for s in &servers {
        let v = kubectl_ok(
            s,
            &[
                "get",
                "configmap",
                "before-join",
                "-o",
                "jsonpath={.data.v}",
            ],
        );
        assert_eq!(v, "before-join");
    }
    for (i, s) in servers.iter().enumerate() {
        let name = format!("written-on-{i}");
        let out = create(s, &name);
        assert!(out.status.success(), "{}", stderr(&out));
        let next = &servers[(i + 1) % 3];
        let v = kubectl_ok(
            next,
            &["get", "configmap", &name, "-o", "jsonpath={.data.v}"],
        );
        assert_eq!(v, name, "read on another server right after the write");
    }
    // resourceVersions are the same on every replica
    let rvs: Vec<String> = servers
        .iter()
        .map(|s| {
            kubectl_ok(
                s,
                &[
                    "get",
                    "configmap",
                    "written-on-1",
                    "-o",
                    "jsonpath={.metadata.resourceVersion}",
                ],
            )
        })
        .collect();
    assert!(rvs.iter().all(|r| r == &rvs[0]), "{rvs:?}");

    // an optimistic-concurrency conflict is decided once, in log order
    let cm: Value = serde_json::from_str(&kubectl_ok(
        &servers[0],
        &["get", "configmap", "written-on-0", "-o", "json"],
    ))
    .unwrap();
    let with = |v: &str| {
        let mut c = cm.clone();
        c["data"]["v"] = json!(v);
        c.to_string()
    };
    let out = crate::util::kubectl_stdin(
        &servers[1].kubeconfig(),
        &["replace", "-f", "-"],
        Some(&with("first")),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = crate::util::kubectl_stdin(
        &servers[2].kubeconfig(),
        &["replace", "-f", "-"],
        Some(&with("second")),
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the object has been modified"),
        "{}",
        stderr(&out)
    );

    // the controllers run once: a Deployment gets one ReplicaSet and
    // exactly its replicas, whichever server took it
    let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "example.test/web:1"}]}}}});
    let out = crate::util::kubectl_stdin(
        &servers[1].kubeconfig(),
        &["apply", "-f", "-"],
        Some(&deploy.to_string()),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let count = |s: &Server, what: &str| -> usize {
        kubectl_ok(s, &["get", what, "-l", "app=web", "-o", "name"])
            .lines()
            .count()
    };
    eventually(60, "three pods", || async {
        (count(&servers[2], "pods") == 3).then_some(())
    })
    .await;

    // a watch from a version no server has reached waits, then says so
    let (code, body) = servers[1]
        .call(
            reqwest::Method::GET,
            "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=999999999999",
            None,
        )
        .await;
    assert_eq!(code, 504, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("Too large resource version"),
        "{body}"
    );

    // kill -9 the leader: the others elect one and take writes again
    let li = leader_of(&m, &servers);
    let survivors: Vec<usize> = (0..3).filter(|i| *i != li).collect();
    // an agent that joined through the leader learns every server from the
    // `default/kubernetes` Endpoints
    let eps = kubectl_ok(
        &servers[0],
        &[
            "get",
            "endpoints",
            "kubernetes",
            "-o",
            "jsonpath={.subsets[*].addresses[*].ip}:{.subsets[*].ports[*].port}",
        ],
    );
    assert!(!eps.is_empty());
    let _agent = crate::util::AgentProc::start(&servers[li], "edge-1");
    let renewed = |s: &Server| {
        kubectl_ok(
            s,
            &[
                "get",
                "lease",
                "-n",
                "kube-node-lease",
                "edge-1",
                "-o",
                "jsonpath={.spec.renewTime}",
            ],
        )
    };
    eventually(60, "the agent's lease", || async {
        let out =
            servers[survivors[0]].kubectl(&["get", "lease", "-n", "kube-node-lease", "edge-1"]);
        out.status.success().then_some(())
    })
    .await;
    // it has read the Endpoints (at start) before its server goes
    tokio::time::sleep(Duration::from_secs(2)).await;
    // a watch on a survivor, open across the failover
    let from = kubectl_ok(
        &servers[survivors[0]],
        &[
            "get",
            "configmap",
            "written-on-2",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ],
    );
    let mut watch =
        crate::watch::Watch::open(&servers[survivors[0]], &format!("resourceVersion={from}")).await;
    servers[li].kill9();
    let mut acknowledged = vec!["before-join".to_string()];
    acknowledged.extend((0..3).map(|i| format!("written-on-{i}")));
    for (n, i) in survivors.iter().enumerate() {
        let name = format!("after-failover-{n}");
        eventually(60, "a survivor takes writes", || async {
            let out = create(&servers[*i], &name);
            let err = stderr(&out);
            (out.status.success() || err.contains("already exists")).then_some(())
        })
        .await;
        acknowledged.push(name);
    }
    for i in &survivors {
        for name in &acknowledged {
            kubectl_ok(&servers[*i], &["get", "configmap", name]);
        }
    }
    // the watch saw both, in order, no gaps or doubles; if the server had
    // no leader for a while the stream ended and resumes from the last
    // delivered version, as clients do
    let mut seen: Vec<(u64, String)> = Vec::new();
    let mut last: u64 = from.parse().unwrap();
    while !["after-failover-0", "after-failover-1"]
        .iter()
        .all(|n| seen.iter().any(|(_, s)| s == n))
    {
        match watch.next(20).await {
            Some((t, o)) => {
                let rv: u64 = o["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(rv > last, "{t} at {rv} after {last}");
                last = rv;
                seen.push((rv, o["metadata"]["name"].as_str().unwrap().to_string()));
            }
            None => {
                assert!(
                    seen.len() < 20,
                    "the watch ended without the writes: {seen:?}"
                );
                watch = crate::watch::Watch::open(
                    &servers[survivors[0]],
                    &format!("resourceVersion={last}"),
                )
                .await;
            }
        }
    }
    let names: Vec<&String> = seen.iter().map(|(_, n)| n).collect();
    let unique: std::collections::BTreeSet<&String> = names.iter().copied().collect();
    assert_eq!(names.len(), unique.len(), "no event twice: {names:?}");
    // the agent lost its server and renews its Lease through another one
    let before = renewed(&servers[survivors[0]]);
    eventually(60, "the agent renews through a survivor", || async {
        (renewed(&servers[survivors[0]]) != before).then_some(())
    })
    .await;
    let before = renewed(&servers[survivors[1]]);
    eventually(30, "and goes on renewing", || async {
        (renewed(&servers[survivors[1]]) != before).then_some(())
    })
    .await;
    // the scheduler and controllers moved with the leadership
    let out = servers[survivors[0]].kubectl(&["scale", "deployment", "web", "--replicas", "4"]);
    assert!(out.status.success(), "{}", stderr(&out));
    eventually(60, "four pods", || async {
        (count(&servers[survivors[1]], "pods") == 4).then_some(())
    })
    .await;
    assert_eq!(count(&servers[survivors[1]], "replicasets"), 1);

    // the killed server comes back with its stored membership (its --join
    // flag is ignored) and catches up
    servers[li].restart().await;
    eventually(60, "the restarted server caught up", || async {
        let out = servers[li].kubectl(&["get", "configmap", "after-failover-1"]);
        out.status.success().then_some(())
    })
    .await;
    let m = members(&servers[li]);
    assert_eq!(m.as_array().unwrap().len(), 3, "{m}");

    // a key rotation would leave the new key on one server: refused
    let out = wk(&[
        "secrets-encrypt",
        "rotate-keys",
        "--kubeconfig",
        servers[li].kubeconfig().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not supported yet on a cluster of 3 servers"),
        "{}",
        stderr(&out)
    );

    // removing a server stops it; the other two go on
    let gone = survivors[1];
    let gone_id = members(&servers[gone])
        .as_array()
        .unwrap()
        .iter()
        .find(|x| servers[gone].url.ends_with(x["address"].as_str().unwrap()))
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = wk(&[
        "cluster",
        "remove",
        &gone_id,
        "--kubeconfig",
        servers[li].kubeconfig().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = servers[gone].exited() {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the removed server stops"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!status.success());
    assert!(servers[gone].log().contains("removed from the cluster"));
    let m = members(&servers[li]);
    assert_eq!(m.as_array().unwrap().len(), 2, "{m}");
    let out = create(&servers[li], "after-removal");
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The short version of the fault runs (`wk-bench chaos`; the long one is
/// in docs/reliability.md): two runs of three servers on their own
/// loopback addresses under kill -9 (some long enough to need a snapshot),
/// SIGSTOP and nftables partitions, with clients and watchers on every
/// server. Each key's history must be linearizable, no acknowledged create
/// may be lost, and every watch must be ordered, gap-free and agree with
/// the acknowledged writes.
#[test]
fn fault_runs_find_no_anomalies() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wk-bench"))
        .args([
            "chaos",
            "--wk",
            crate::util::WK,
            "--runs",
            "2",
            "--seconds",
            "10",
        ])
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running wk-bench chaos");
    let (report, log) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "{report}\n{log}");
    assert!(
        report.contains("non-linearizable keys 0, undecided keys 0, acknowledged creates lost 0"),
        "{report}\n{log}"
    );
    assert!(report.contains("watch problems 0"), "{report}\n{log}");
    // the runs did something: operations were checked and faults injected
    let ops: usize = report
        .split("operations ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(ops > 100, "{report}");
    let faults = report.lines().find_map(|l| l.strip_prefix("faults: "));
    assert!(faults.is_some_and(|f| !f.is_empty()), "{report}");
}

/// Run `nft -f -` with `script`.
fn nft(script: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("nft (nftables)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "nft failed on {script}");
}

/// Drops packets between servers' addresses; the table goes on drop.
struct Partition(String);

impl Partition {
    fn new() -> Partition {
        let table = format!("wk_test_{}", std::process::id());
        nft(&format!(
            "table ip {table} {{\n chain input {{\n  type filter hook input priority 0; policy accept;\n }}\n}}\n"
        ));
        Partition(table)
    }

    fn isolate(&self, addr: &str, others: &[&str]) {
        let mut script = String::new();
        for o in others {
            script.push_str(&format!(
                "add rule ip {t} input ip saddr {addr} ip daddr {o} drop\nadd rule ip {t} input ip saddr {o} ip daddr {addr} drop\n",
                t = self.0
            ));
        }
        nft(&script);
    }

    fn heal(&self) {
        nft(&format!("flush chain ip {} input\n", self.0));
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "ip", &self.0])
            .status();
    }
}

/// A leader cut off from its followers (nftables drops the packets between
/// the servers' own loopback addresses) still believes it leads; its
/// watches end within a few election timeouts, as a cut-off follower's do,
/// so clients watch again elsewhere. Healed, it rejoins and serves again.
#[tokio::test]
async fn a_cut_off_leader_ends_its_watches() {
    let cidrs = cluster_cidrs();
    let block = std::process::id() % 250 + 1;
    let addrs: Vec<String> = (1..=3).map(|i| format!("127.78.{block}.{i}")).collect();
    let mut servers: Vec<Server> = Vec::new();
    for a in &addrs {
        let port = std::net::TcpListener::bind((a.as_str(), 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut b = Server::builder()
            .arg("--listen")
            .arg(&format!("{a}:{port}"))
            .arg("--disable-agent");
        for f in &cidrs {
            b = b.arg(f);
        }
        if let Some(first) = servers.first() {
            b = b
                .arg("--join")
                .arg(&first.url)
                .arg("--token")
                .arg(&first.join_token);
        }
        servers.push(b.start().await);
    }
    let m = eventually(60, "three voters", || async {
        let m = members(&servers[2]);
        (voters(&m) == 3).then_some(m)
    })
    .await;
    let li = leader_of(&m, &servers);
    let mut watch = servers[li]
        .http
        .get(format!(
            "{}/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=300",
            servers[li].url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(watch.status().as_u16(), 200);

    let partition = Partition::new();
    let others: Vec<&str> = (0..3)
        .filter(|i| *i != li)
        .map(|i| addrs[i].as_str())
        .collect();
    partition.isolate(&addrs[li], &others);
    let cut = std::time::Instant::now();
    // drain the initial events; the stream must then end on its own
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(_)) = watch.chunk().await {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "the cut-off leader's watch was still open after 30 s"
    );
    eprintln!("the watch ended {:?} after the cut", cut.elapsed());
    // the other two elect a leader and take writes
    let survivor = (li + 1) % 3;
    eventually(60, "the majority takes writes", || async {
        let out = create(&servers[survivor], "while-cut-off");
        (out.status.success() || stderr(&out).contains("already exists")).then_some(())
    })
    .await;

    // healed, the old leader follows the new one and serves the write
    partition.heal();
    let v = eventually(60, "the old leader catches up", || async {
        let out = servers[li].kubectl(&[
            "get",
            "configmap",
            "while-cut-off",
            "-o",
            "jsonpath={.data.v}",
        ]);
        out.status.success().then(|| stdout(&out))
    })
    .await;
    assert_eq!(v, "while-cut-off");
}
