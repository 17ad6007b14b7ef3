//! Turning a pod's container into a runtime [`ContainerSpec`]: argv, env
//! (literal, `valueFrom`, `envFrom`), volumes as mounts, limits. Pure, apart
//! from the lookups passed in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::Value;
use wasmkube_runtime::image::{Credentials, PullPolicy};
use wasmkube_runtime::{ContainerId, ContainerSpec, LinuxOptions, Mount, Security};

use crate::api::quantity;

/// Why a container cannot be configured (kubelet: CreateContainerConfigError).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Data the mapping may read: ConfigMaps and Secrets of the pod's namespace.
pub trait Lookup {
    fn configmap(&self, name: &str) -> Option<BTreeMap<String, String>>;
    fn secret(&self, name: &str) -> Option<BTreeMap<String, String>>;
}

/// Decode a Secret's `data` (base64) into strings.
pub fn secret_data(secret: &Value) -> BTreeMap<String, String> {
    secret["data"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| {
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(v.as_str()?)
                        .ok()?;
                    Some((k.clone(), String::from_utf8_lossy(&raw).into_owned()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A ConfigMap's `data`.
pub fn configmap_data(cm: &Value) -> BTreeMap<String, String> {
    cm["data"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn s<'a>(v: &'a Value, p: &str) -> Option<&'a str> {
    v.pointer(p).and_then(Value::as_str)
}

/// The pod fields `fieldRef` can read.
pub fn field_ref(pod: &Value, path: &str, pod_ip: &str) -> Option<String> {
    match path {
        "metadata.name" => s(pod, "/metadata/name").map(String::from),
        "metadata.namespace" => s(pod, "/metadata/namespace").map(String::from),
        "metadata.uid" => s(pod, "/metadata/uid").map(String::from),
        "spec.nodeName" => s(pod, "/spec/nodeName").map(String::from),
        "spec.serviceAccountName" => Some(
            s(pod, "/spec/serviceAccountName")
                .unwrap_or("default")
                .to_string(),
        ),
        "status.podIP" => Some(pod_ip.to_string()),
        "status.hostIP" => s(pod, "/status/hostIP").map(String::from),
        p => {
            let key = p
                .strip_prefix("metadata.labels['")
                .or_else(|| p.strip_prefix("metadata.annotations['"))?;
            let key = key.strip_suffix("']")?;
            let section = if p.starts_with("metadata.labels") {
                "labels"
            } else {
                "annotations"
            };
            pod["metadata"][section][key].as_str().map(String::from)
        }
    }
}

fn env_var(
    pod: &Value,
    e: &Value,
    lookup: &dyn Lookup,
    pod_ip: &str,
    at: &str,
) -> Result<Option<String>, ConfigError> {
    if let Some(v) = e.get("value").and_then(Value::as_str) {
        return Ok(Some(v.to_string()));
    }
    let Some(from) = e.get("valueFrom") else {
        return Ok(Some(String::new()));
    };
    for (field, what, secret) in [
        ("configMapKeyRef", "ConfigMap", false),
        ("secretKeyRef", "Secret", true),
    ] {
        if let Some(r) = from.get(field) {
            let (name, key) = (
                r["name"].as_str().unwrap_or_default(),
                r["key"].as_str().unwrap_or_default(),
            );
            let data = if secret {
                lookup.secret(name)
            } else {
                lookup.configmap(name)
            };
            return match data.and_then(|d| d.get(key).cloned()) {
                Some(v) => Ok(Some(v)),
                None if r["optional"].as_bool().unwrap_or(false) => Ok(None),
                None => Err(ConfigError(format!(
                    "{at}: couldn't find key {key} in {what} {name}"
                ))),
            };
        }
    }
    if let Some(r) = from.get("fieldRef") {
        let path = r["fieldPath"].as_str().unwrap_or_default();
        return field_ref(pod, path, pod_ip)
            .map(Some)
            .ok_or_else(|| ConfigError(format!("{at}: unsupported fieldPath {path:?}")));
    }
    Ok(Some(String::new()))
}

/// The registry host of an image reference (`docker.io` when it has none).
pub fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first
        }
        _ => "docker.io",
    }
}

/// Basic-auth credentials for `image`'s registry from the pod's
/// `imagePullSecrets` (`kubernetes.io/dockerconfigjson` Secrets).
pub fn pull_credentials(pod: &Value, image: &str, lookup: &dyn Lookup) -> Option<Credentials> {
    let registry = registry_of(image);
    for s in pod
        .pointer("/spec/imagePullSecrets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let data = lookup.secret(s["name"].as_str().unwrap_or_default())?;
        let config: Value = serde_json::from_str(data.get(".dockerconfigjson")?).ok()?;
        let auths = config["auths"].as_object()?;
        let entry = auths.iter().find(|(k, _)| {
            let host = k
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .split('/')
                .next()
                .unwrap_or_default();
            host == registry
        });
        if let Some((_, e)) = entry {
            if let (Some(u), Some(p)) = (e["username"].as_str(), e["password"].as_str()) {
                return Some(Credentials {
                    username: u.into(),
                    password: p.into(),
                });
            }
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(e["auth"].as_str()?)
                .ok()?;
            let (u, p) = String::from_utf8(decoded)
                .ok()?
                .split_once(':')
                .map(|(u, p)| (u.to_string(), p.to_string()))?;
            return Some(Credentials {
                username: u,
                password: p,
            });
        }
    }
    None
}

/// Where the agent keeps a pod's files.
pub fn pod_dir(data_dir: &Path, uid: &str) -> PathBuf {
    data_dir.join("pods").join(uid)
}

/// Map `container` of `pod` to a runtime spec. `volumes` maps each volume
/// name to the host directory prepared for it.
#[allow(clippy::too_many_arguments)]
pub fn container_spec(
    pod: &Value,
    container: &Value,
    restart: u32,
    volumes: &BTreeMap<String, PathBuf>,
    lookup: &dyn Lookup,
    pod_ip: &str,
    log_path: PathBuf,
    service_env: &[(String, String)],
) -> Result<ContainerSpec, ConfigError> {
    let name = container["name"].as_str().unwrap_or_default();
    let uid = s(pod, "/metadata/uid").unwrap_or_default();
    let strings = |k: &str| -> Vec<String> {
        container[k]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (command, args) = (strings("command"), strings("args"));
    let argv = if command.is_empty() {
        std::iter::once(name.to_string())
            .chain(args.iter().cloned())
            .collect()
    } else {
        command.iter().chain(&args).cloned().collect()
    };

    let mut env: Vec<(String, String)> = service_env.to_vec();
    let set = |k: String, v: String, env: &mut Vec<(String, String)>| {
        env.retain(|(ek, _)| *ek != k);
        env.push((k, v));
    };
    for (i, from) in container["envFrom"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let prefix = from["prefix"].as_str().unwrap_or_default();
        let (data, what, r) = if let Some(r) = from.get("configMapRef") {
            (
                lookup.configmap(r["name"].as_str().unwrap_or_default()),
                "ConfigMap",
                r,
            )
        } else if let Some(r) = from.get("secretRef") {
            (
                lookup.secret(r["name"].as_str().unwrap_or_default()),
                "Secret",
                r,
            )
        } else {
            continue;
        };
        match data {
            Some(d) => {
                for (k, v) in d {
                    set(format!("{prefix}{k}"), v, &mut env);
                }
            }
            None if r["optional"].as_bool().unwrap_or(false) => {}
            None => {
                return Err(ConfigError(format!(
                    "envFrom[{i}]: {what} {:?} not found",
                    r["name"].as_str().unwrap_or_default()
                )))
            }
        }
    }
    for (i, e) in container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let k = e["name"].as_str().unwrap_or_default().to_string();
        if let Some(v) = env_var(pod, e, lookup, pod_ip, &format!("env[{i}] {k}"))? {
            set(k, v, &mut env);
        }
    }

    let mut mounts = Vec::new();
    for m in container["volumeMounts"].as_array().into_iter().flatten() {
        let vol = m["name"].as_str().unwrap_or_default();
        let host = volumes
            .get(vol)
            .ok_or_else(|| ConfigError(format!("volume {vol:?} is not prepared")))?;
        let host = match m["subPath"].as_str().filter(|p| !p.is_empty()) {
            Some(sub) if !sub.contains("..") => host.join(sub),
            Some(sub) => {
                return Err(ConfigError(format!(
                    "subPath {sub:?} must not contain '..'"
                )))
            }
            None => host.clone(),
        };
        mounts.push(Mount {
            host_path: host,
            guest_path: m["mountPath"].as_str().unwrap_or_default().to_string(),
            read_only: m["readOnly"].as_bool().unwrap_or(false),
        });
    }
    let limit = |k: &str| {
        container
            .pointer(&format!("/resources/limits/{k}"))
            .and_then(Value::as_str)
    };
    let memory_limit = limit("memory")
        .map(quantity::bytes)
        .transpose()
        .map_err(|e| ConfigError(format!("resources.limits.memory: {e}")))?;
    let cpu_millis = limit("cpu")
        .map(quantity::millicores)
        .transpose()
        .map_err(|e| ConfigError(format!("resources.limits.cpu: {e}")))?;
    let image = container["image"].as_str().unwrap_or_default().to_string();
    let http = http_limits(pod)?;
    Ok(ContainerSpec {
        pull_policy: PullPolicy::parse(
            container["imagePullPolicy"]
                .as_str()
                .unwrap_or("IfNotPresent"),
        ),
        pull_credentials: pull_credentials(pod, &image, lookup),
        pod_ip: pod_ip.parse().ok(),
        name_lookup: None,
        http,
        id: ContainerId(format!("{uid}/{name}/{restart}")),
        image,
        args: argv,
        env,
        working_dir: container["workingDir"].as_str().map(String::from),
        mounts,
        memory_limit,
        cpu_millis,
        log_path,
        sandbox: None,
        linux: LinuxOptions {
            command,
            args,
            security: security(pod, container),
            cpu_request_millis: container
                .pointer("/resources/requests/cpu")
                .and_then(Value::as_str)
                .and_then(|q| quantity::millicores(q).ok()),
            cgroup_parent: format!("/wasmkube/{}/pod{uid}", qos_class(pod).to_lowercase()),
            hostname: pod["spec"]["hostname"]
                .as_str()
                .or(pod["metadata"]["name"].as_str())
                .unwrap_or_default()
                .to_string(),
            resolv_conf: None,
            stdin: container["stdin"].as_bool().unwrap_or(false),
            stdin_once: container["stdinOnce"].as_bool().unwrap_or(false),
            tty: container["tty"].as_bool().unwrap_or(false),
        },
    })
}

/// The `/etc/resolv.conf` of a Linux container, as the kubelet writes it
/// for the pod's `dnsPolicy` (`ClusterFirst` by default; `Default` and
/// `hostNetwork` pods get the node's; `None` only `dnsConfig`) with
/// `dnsConfig` added: its nameservers and searches after the policy's, its
/// options replacing those of the same name. `node` is the node's own file;
/// `cluster_dns` the cluster DNS Service's address, if there is one.
pub fn resolv_conf(pod: &Value, cluster_dns: Option<&str>, node: &str) -> String {
    let ns = s(pod, "/metadata/namespace").unwrap_or("default");
    let host_network = pod["spec"]["hostNetwork"].as_bool().unwrap_or(false);
    let policy = s(pod, "/spec/dnsPolicy").unwrap_or("ClusterFirst");
    let (mut servers, mut search, mut options) = (Vec::new(), Vec::new(), Vec::new());
    let from_node =
        |servers: &mut Vec<String>, search: &mut Vec<String>, options: &mut Vec<String>| {
            for line in node.lines() {
                let mut words = line.split_whitespace();
                match words.next() {
                    Some("nameserver") => servers.extend(words.map(String::from)),
                    Some("search") | Some("domain") => search.extend(words.map(String::from)),
                    Some("options") => options.extend(words.map(String::from)),
                    _ => {}
                }
            }
        };
    let cluster = match (policy, cluster_dns) {
        ("ClusterFirstWithHostNet", Some(ip)) => Some(ip),
        ("ClusterFirst", Some(ip)) if !host_network => Some(ip),
        _ => None,
    };
    match (policy, cluster) {
        ("None", _) => {}
        (_, Some(ip)) => {
            servers.push(ip.to_string());
            search.extend([
                format!("{ns}.svc.{}", super::dns::DOMAIN),
                format!("svc.{}", super::dns::DOMAIN),
                super::dns::DOMAIN.to_string(),
            ]);
            // the node's search domains follow, as the kubelet adds them
            let mut node_search = Vec::new();
            from_node(&mut Vec::new(), &mut node_search, &mut Vec::new());
            search.extend(node_search);
            options.push("ndots:5".to_string());
        }
        (_, None) => from_node(&mut servers, &mut search, &mut options),
    }
    let cfg = &pod["spec"]["dnsConfig"];
    let strings = |k: &str| -> Vec<String> {
        cfg[k]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(String::from))
            .collect()
    };
    servers.extend(strings("nameservers"));
    search.extend(strings("searches"));
    for o in cfg["options"].as_array().into_iter().flatten() {
        let Some(name) = o["name"].as_str() else {
            continue;
        };
        options.retain(|x| x.split(':').next() != Some(name));
        options.push(match o["value"].as_str() {
            Some(v) => format!("{name}:{v}"),
            None => name.to_string(),
        });
    }
    search.dedup();
    let mut out = String::new();
    for server in servers.iter().take(3) {
        out.push_str(&format!("nameserver {server}\n"));
    }
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
}

/// A container's security settings: its own `securityContext` over the pod's.
pub fn security(pod: &Value, container: &Value) -> Security {
    let psc = &pod["spec"]["securityContext"];
    let csc = &container["securityContext"];
    let pick = |k: &str| {
        csc.get(k)
            .filter(|v| !v.is_null())
            .or(psc.get(k).filter(|v| !v.is_null()))
    };
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(String::from))
            .collect()
    };
    Security {
        run_as_user: pick("runAsUser").and_then(Value::as_u64).map(|u| u as u32),
        run_as_group: pick("runAsGroup").and_then(Value::as_u64).map(|u| u as u32),
        supplemental_groups: psc["supplementalGroups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| g.as_u64().map(|g| g as u32))
            .collect(),
        read_only_root: csc["readOnlyRootFilesystem"].as_bool().unwrap_or(false),
        privileged: csc["privileged"].as_bool().unwrap_or(false),
        allow_privilege_escalation: csc["allowPrivilegeEscalation"].as_bool(),
        cap_add: strings(&csc["capabilities"]["add"]),
        cap_drop: strings(&csc["capabilities"]["drop"]),
        seccomp_runtime_default: pick("seccompProfile")
            .and_then(|p| p["type"].as_str())
            .is_some_and(|t| t == "RuntimeDefault"),
    }
}

pub use crate::api::qos::qos_class;

/// Annotations that set an HTTP function's limits (Wasm-specific; see docs/http-functions.md).
pub const HTTP_CONCURRENCY: &str = "wasmkube.io/http-concurrency";
pub const HTTP_TIMEOUT: &str = "wasmkube.io/http-timeout-seconds";
pub const HTTP_MAX_BODY: &str = "wasmkube.io/http-max-body";

/// The HTTP function limits of a pod, from its annotations.
pub fn http_limits(pod: &Value) -> Result<wasmkube_runtime::HttpLimits, ConfigError> {
    let mut limits = wasmkube_runtime::HttpLimits::default();
    let ann = |k: &str| pod["metadata"]["annotations"][k].as_str();
    if let Some(v) = ann(HTTP_CONCURRENCY) {
        limits.concurrency = v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
            ConfigError(format!(
                "annotation {HTTP_CONCURRENCY}: {v:?} is not a positive number"
            ))
        })?;
    }
    if let Some(v) = ann(HTTP_TIMEOUT) {
        let secs: f64 = v
            .parse()
            .ok()
            .filter(|n: &f64| *n > 0.0 && n.is_finite())
            .ok_or_else(|| {
                ConfigError(format!(
                    "annotation {HTTP_TIMEOUT}: {v:?} is not a positive number of seconds"
                ))
            })?;
        limits.timeout = std::time::Duration::from_secs_f64(secs);
    }
    if let Some(v) = ann(HTTP_MAX_BODY) {
        limits.max_body = quantity::bytes(v)
            .map_err(|e| ConfigError(format!("annotation {HTTP_MAX_BODY}: {e}")))?;
    }
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resolv_conf_follows_the_dns_policy() {
        let node = "# systemd\nnameserver 10.0.0.2\nsearch corp.example\noptions edns0\n";
        let pod = json!({"metadata": {"namespace": "shop"}, "spec": {}});
        assert_eq!(
            resolv_conf(&pod, Some("127.32.0.10"), node),
            "nameserver 127.32.0.10\n\
             search shop.svc.cluster.local svc.cluster.local cluster.local corp.example\n\
             options ndots:5\n"
        );
        // no cluster DNS yet, Default, or hostNetwork: the node's file
        let nodes = "nameserver 10.0.0.2\nsearch corp.example\noptions edns0\n";
        assert_eq!(resolv_conf(&pod, None, node), nodes);
        let default = json!({"metadata": {"namespace": "shop"}, "spec": {"dnsPolicy": "Default"}});
        assert_eq!(resolv_conf(&default, Some("127.32.0.10"), node), nodes);
        let host = json!({"metadata": {"namespace": "shop"}, "spec": {"hostNetwork": true}});
        assert_eq!(resolv_conf(&host, Some("127.32.0.10"), node), nodes);
        let host_cluster = json!({"metadata": {"namespace": "shop"},
            "spec": {"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"}});
        assert!(resolv_conf(&host_cluster, Some("127.32.0.10"), node)
            .starts_with("nameserver 127.32.0.10\n"));
        // None: dnsConfig only; options replace those of the same name
        let none = json!({"metadata": {"namespace": "shop"}, "spec": {"dnsPolicy": "None",
            "dnsConfig": {"nameservers": ["1.2.3.4"], "searches": ["a.example"],
                          "options": [{"name": "ndots", "value": "2"}, {"name": "rotate"}]}}});
        assert_eq!(
            resolv_conf(&none, Some("127.32.0.10"), node),
            "nameserver 1.2.3.4\nsearch a.example\noptions ndots:2 rotate\n"
        );
        let tuned = json!({"metadata": {"namespace": "shop"},
            "spec": {"dnsConfig": {"options": [{"name": "ndots", "value": "1"}]}}});
        assert!(resolv_conf(&tuned, Some("127.32.0.10"), node).ends_with("options ndots:1\n"));
    }

    struct Data;

    impl Lookup for Data {
        fn configmap(&self, name: &str) -> Option<BTreeMap<String, String>> {
            (name == "cfg").then(|| {
                [
                    ("level".to_string(), "debug".to_string()),
                    ("mode".to_string(), "fast".to_string()),
                ]
                .into()
            })
        }
        fn secret(&self, name: &str) -> Option<BTreeMap<String, String>> {
            (name == "sec").then(|| [("password".to_string(), "hunter2".to_string())].into())
        }
    }

    fn pod() -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"app": "web"}}, "spec": {"nodeName": "n1"}})
    }

    #[test]
    fn env_comes_from_literals_configmaps_secrets_and_fields() {
        let c = json!({"name": "app", "image": "file:///a.wasm", "args": ["--x"],
            "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
            "env": [
                {"name": "LIT", "value": "1"},
                {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "password"}}},
                {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "level"}}},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "missing", "key": "k", "optional": true}}}
            ],
            "resources": {"limits": {"memory": "64Mi", "cpu": "250m"}}});
        let spec = container_spec(
            &pod(),
            &c,
            2,
            &BTreeMap::new(),
            &Data,
            "127.1.0.5",
            PathBuf::from("/l"),
            &[("WEB_SERVICE_HOST".into(), "10.0.0.1".into())],
        )
        .unwrap();
        let env: BTreeMap<_, _> = spec.env.iter().cloned().collect();
        assert_eq!(env["LIT"], "1");
        assert_eq!(env["PW"], "hunter2");
        assert_eq!(env["LEVEL"], "debug");
        assert_eq!(env["CFG_mode"], "fast");
        assert_eq!(env["POD"], "p");
        assert_eq!(env["IP"], "127.1.0.5");
        assert_eq!(env["APP"], "web");
        assert_eq!(env["WEB_SERVICE_HOST"], "10.0.0.1");
        assert!(!env.contains_key("OPT"));
        assert_eq!(spec.args, vec!["app", "--x"]);
        assert_eq!(spec.memory_limit, Some(64 * 1024 * 1024));
        assert_eq!(spec.cpu_millis, Some(250));
        assert_eq!(spec.id.0, "u1/app/2");
    }

    #[test]
    fn pull_secrets_give_credentials_for_the_images_registry() {
        struct Secrets;
        impl Lookup for Secrets {
            fn configmap(&self, _: &str) -> Option<BTreeMap<String, String>> {
                None
            }
            fn secret(&self, name: &str) -> Option<BTreeMap<String, String>> {
                let cfg = match name {
                    "plain" => {
                        r#"{"auths": {"127.0.0.1:5000": {"username": "u", "password": "p"}}}"#
                            .to_string()
                    }
                    "encoded" => format!(
                        r#"{{"auths": {{"https://reg.example.com": {{"auth": "{}"}}}}}}"#,
                        base64::engine::general_purpose::STANDARD.encode("me:secret")
                    ),
                    _ => return None,
                };
                Some([(".dockerconfigjson".to_string(), cfg)].into())
            }
        }
        let pod = json!({"spec": {"imagePullSecrets": [{"name": "plain"}, {"name": "encoded"}]}});
        assert_eq!(
            pull_credentials(&pod, "127.0.0.1:5000/a/b:1", &Secrets),
            Some(Credentials {
                username: "u".into(),
                password: "p".into()
            })
        );
        assert_eq!(
            pull_credentials(&pod, "reg.example.com/a:1", &Secrets),
            Some(Credentials {
                username: "me".into(),
                password: "secret".into()
            })
        );
        assert_eq!(pull_credentials(&pod, "other.io/a:1", &Secrets), None);
        assert_eq!(registry_of("nginx"), "docker.io");
        assert_eq!(registry_of("localhost:5000/x"), "localhost:5000");
    }

    #[test]
    fn missing_references_are_config_errors() {
        let c = json!({"name": "app", "image": "i", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}]});
        let e = container_spec(
            &pod(),
            &c,
            0,
            &BTreeMap::new(),
            &Data,
            "",
            PathBuf::new(),
            &[],
        )
        .unwrap_err();
        assert!(e.0.contains("couldn't find key k in Secret nope"), "{e}");
        let c = json!({"name": "app", "image": "i", "volumeMounts": [{"name": "v", "mountPath": "/data"}]});
        assert!(container_spec(
            &pod(),
            &c,
            0,
            &BTreeMap::new(),
            &Data,
            "",
            PathBuf::new(),
            &[]
        )
        .is_err());
    }

    #[test]
    fn command_replaces_argv0_and_mounts_follow_volumes() {
        let c = json!({"name": "app", "image": "i", "command": ["tool", "run"], "args": ["x"],
            "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": true}, {"name": "data", "mountPath": "/sub", "subPath": "a"}]});
        let vols = [("data".to_string(), PathBuf::from("/host/data"))].into();
        let spec = container_spec(&pod(), &c, 0, &vols, &Data, "", PathBuf::new(), &[]).unwrap();
        assert_eq!(spec.args, vec!["tool", "run", "x"]);
        assert_eq!(
            spec.mounts[0],
            Mount {
                host_path: "/host/data".into(),
                guest_path: "/data".into(),
                read_only: true
            }
        );
        assert_eq!(spec.mounts[1].host_path, PathBuf::from("/host/data/a"));
    }
}
