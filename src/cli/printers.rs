//! Table columns per kind, as kubectl prints them, and output formats.

use serde_json::Value;

use crate::api::resources::Resource;
use crate::api::selector::LabelSelector;

/// Output format of `get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Wide,
    Yaml,
    Json,
    Name,
}

/// kubectl's short human duration: `45s`, `3m20s`, `5h`, `2d3h`, `400d`.
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if d < 8 {
        if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else {
        format!("{}y", d / 365)
    }
}

/// Age of a timestamp field.
pub fn age(ts: Option<&str>) -> String {
    match ts.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()) {
        Some(t) => {
            human_duration((chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds())
        }
        None => "<unknown>".into(),
    }
}

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or_default()
}

fn n(v: &Value, p: &str) -> i64 {
    v.pointer(p).and_then(Value::as_i64).unwrap_or(0)
}

fn or_none(x: String) -> String {
    if x.is_empty() {
        "<none>".into()
    } else {
        x
    }
}

fn pod_status(pod: &Value) -> String {
    if pod
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
    {
        return "Terminating".into();
    }
    let statuses = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for c in &statuses {
        if let Some(r) = c.pointer("/state/waiting/reason").and_then(Value::as_str) {
            return r.into();
        }
        if let Some(t) = c.pointer("/state/terminated") {
            return match t["reason"].as_str() {
                Some(r) if !r.is_empty() => r.into(),
                _ => format!("ExitCode:{}", t["exitCode"].as_i64().unwrap_or(0)),
            };
        }
    }
    match s(pod, "/status/reason") {
        "" => s(pod, "/status/phase").to_string(),
        r => r.into(),
    }
}

fn service_ports(svc: &Value) -> String {
    let ports = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    or_none(
        ports
            .iter()
            .map(|p| {
                let np = p
                    .get("nodePort")
                    .and_then(Value::as_i64)
                    .map(|x| format!(":{x}"))
                    .unwrap_or_default();
                format!(
                    "{}{np}/{}",
                    n(p, "/port"),
                    p.get("protocol").and_then(Value::as_str).unwrap_or("TCP")
                )
            })
            .collect::<Vec<_>>()
            .join(","),
    )
}

fn node_ready(node: &Value) -> String {
    let conds = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ready = conds
        .iter()
        .find(|c| c["type"] == "Ready")
        .map(|c| c["status"] == "True");
    let mut status = match ready {
        Some(true) => "Ready".to_string(),
        _ => "NotReady".to_string(),
    };
    if node.pointer("/spec/unschedulable") == Some(&Value::Bool(true)) {
        status.push_str(",SchedulingDisabled");
    }
    status
}

fn selector_string(v: Option<&Value>) -> String {
    v.and_then(|s| LabelSelector::from_object(s).ok())
        .map(|s| s.to_string())
        .unwrap_or_default()
}

fn map_string(v: Option<&Value>) -> String {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn containers_and_images(spec: Option<&Value>) -> (String, String) {
    let cs = spec
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    (
        cs.iter()
            .map(|c| s(c, "/name").to_string())
            .collect::<Vec<_>>()
            .join(","),
        cs.iter()
            .map(|c| s(c, "/image").to_string())
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// Column headers for a kind.
pub fn headers(res: &Resource, wide: bool) -> Vec<&'static str> {
    let mut h: Vec<&str> = match res.kind {
        "Pod" => vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        "Service" => vec![
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE",
        ],
        "Deployment" => vec!["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        "ReplicaSet" => vec!["NAME", "DESIRED", "CURRENT", "READY", "AGE"],
        "StatefulSet" => vec!["NAME", "READY", "AGE"],
        "DaemonSet" => vec![
            "NAME",
            "DESIRED",
            "CURRENT",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "NODE SELECTOR",
            "AGE",
        ],
        "Job" => vec!["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"],
        "CronJob" => vec![
            "NAME",
            "SCHEDULE",
            "TIMEZONE",
            "SUSPEND",
            "ACTIVE",
            "LAST SCHEDULE",
            "AGE",
        ],
        "Node" => vec!["NAME", "STATUS", "ROLES", "AGE", "VERSION"],
        "Namespace" => vec!["NAME", "STATUS", "AGE"],
        "ConfigMap" => vec!["NAME", "DATA", "AGE"],
        "Secret" => vec!["NAME", "TYPE", "DATA", "AGE"],
        "Event" => vec!["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
        "PersistentVolumeClaim" => vec![
            "NAME",
            "STATUS",
            "VOLUME",
            "CAPACITY",
            "ACCESS MODES",
            "STORAGECLASS",
            "AGE",
        ],
        "PersistentVolume" => vec![
            "NAME",
            "CAPACITY",
            "ACCESS MODES",
            "RECLAIM POLICY",
            "STATUS",
            "CLAIM",
            "STORAGECLASS",
            "AGE",
        ],
        "Ingress" => vec!["NAME", "CLASS", "HOSTS", "ADDRESS", "PORTS", "AGE"],
        "Endpoints" => vec!["NAME", "ENDPOINTS", "AGE"],
        "EndpointSlice" => vec!["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"],
        "IngressClass" => vec!["NAME", "CONTROLLER", "PARAMETERS", "AGE"],
        "IPAddress" => vec!["NAME", "PARENTREF"],
        "Lease" => vec!["NAME", "HOLDER", "AGE"],
        "HorizontalPodAutoscaler" => vec![
            "NAME",
            "REFERENCE",
            "TARGETS",
            "MINPODS",
            "MAXPODS",
            "REPLICAS",
            "AGE",
        ],
        _ => vec!["NAME", "AGE"],
    };
    if wide {
        match res.kind {
            "Pod" => h.extend(["IP", "NODE", "NOMINATED NODE", "READINESS GATES"]),
            "Service" => h.push("SELECTOR"),
            "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Job" => {
                h.extend(["CONTAINERS", "IMAGES", "SELECTOR"])
            }
            "Node" => h.extend([
                "INTERNAL-IP",
                "EXTERNAL-IP",
                "OS-IMAGE",
                "KERNEL-VERSION",
                "CONTAINER-RUNTIME",
            ]),
            _ => {}
        }
    }
    h
}

/// One table row for an object.
pub fn row(res: &Resource, o: &Value, wide: bool) -> Vec<String> {
    let name = s(o, "/metadata/name").to_string();
    let age_col = age(o
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str));
    let mut r: Vec<String> = match res.kind {
        "Pod" => {
            let statuses = o
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let total = o
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let ready = statuses.iter().filter(|c| c["ready"] == true).count();
            let restarts: i64 = statuses
                .iter()
                .map(|c| c["restartCount"].as_i64().unwrap_or(0))
                .sum();
            vec![
                name,
                format!("{ready}/{total}"),
                pod_status(o),
                restarts.to_string(),
                age_col,
            ]
        }
        "Service" => {
            let lb: Vec<String> = o
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(|i| s(i, "/ip").to_string()).collect())
                .unwrap_or_default();
            vec![
                name,
                s(o, "/spec/type").into(),
                or_none(s(o, "/spec/clusterIP").into()),
                or_none(lb.join(",")),
                service_ports(o),
                age_col,
            ]
        }
        "Deployment" => vec![
            name,
            format!(
                "{}/{}",
                n(o, "/status/readyReplicas"),
                n(o, "/spec/replicas")
            ),
            n(o, "/status/updatedReplicas").to_string(),
            n(o, "/status/availableReplicas").to_string(),
            age_col,
        ],
        "ReplicaSet" => vec![
            name,
            n(o, "/spec/replicas").to_string(),
            n(o, "/status/replicas").to_string(),
            n(o, "/status/readyReplicas").to_string(),
            age_col,
        ],
        "StatefulSet" => vec![
            name,
            format!(
                "{}/{}",
                n(o, "/status/readyReplicas"),
                n(o, "/spec/replicas")
            ),
            age_col,
        ],
        "DaemonSet" => vec![
            name,
            n(o, "/status/desiredNumberScheduled").to_string(),
            n(o, "/status/currentNumberScheduled").to_string(),
            n(o, "/status/numberReady").to_string(),
            n(o, "/status/updatedNumberScheduled").to_string(),
            n(o, "/status/numberAvailable").to_string(),
            or_none(map_string(o.pointer("/spec/template/spec/nodeSelector"))),
            age_col,
        ],
        "Job" => {
            let conds = o
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let status = if conds
                .iter()
                .any(|c| c["type"] == "Complete" && c["status"] == "True")
            {
                "Complete"
            } else if conds
                .iter()
                .any(|c| c["type"] == "Failed" && c["status"] == "True")
            {
                "Failed"
            } else {
                "Running"
            };
            let dur = match (
                o.pointer("/status/startTime").and_then(Value::as_str),
                o.pointer("/status/completionTime").and_then(Value::as_str),
            ) {
                (Some(a), Some(b)) => match (
                    chrono::DateTime::parse_from_rfc3339(a),
                    chrono::DateTime::parse_from_rfc3339(b),
                ) {
                    (Ok(a), Ok(b)) => human_duration((b - a).num_seconds()),
                    _ => String::new(),
                },
                (Some(a), None) => age(Some(a)),
                _ => String::new(),
            };
            vec![
                name,
                status.into(),
                format!(
                    "{}/{}",
                    n(o, "/status/succeeded"),
                    n(o, "/spec/completions").max(1)
                ),
                dur,
                age_col,
            ]
        }
        "CronJob" => vec![
            name,
            s(o, "/spec/schedule").into(),
            or_none(s(o, "/spec/timeZone").into()),
            (o.pointer("/spec/suspend") == Some(&Value::Bool(true)))
                .to_string()
                .replace("true", "True")
                .replace("false", "False"),
            o.pointer("/status/active")
                .and_then(Value::as_array)
                .map_or(0, Vec::len)
                .to_string(),
            o.pointer("/status/lastScheduleTime")
                .and_then(Value::as_str)
                .map(|t| age(Some(t)))
                .unwrap_or_else(|| "<none>".into()),
            age_col,
        ],
        "Node" => {
            let roles: Vec<String> = o
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .map(|m| {
                    m.keys()
                        .filter_map(|k| {
                            k.strip_prefix("node-role.kubernetes.io/").map(String::from)
                        })
                        .collect()
                })
                .unwrap_or_default();
            vec![
                name,
                node_ready(o),
                or_none(roles.join(",")),
                age_col,
                s(o, "/status/nodeInfo/kubeletVersion").into(),
            ]
        }
        "Namespace" => vec![name, s(o, "/status/phase").into(), age_col],
        "ConfigMap" => {
            let count = o
                .get("data")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len())
                + o.get("binaryData")
                    .and_then(Value::as_object)
                    .map_or(0, |m| m.len());
            vec![name, count.to_string(), age_col]
        }
        "Secret" => vec![
            name,
            s(o, "/type").into(),
            o.get("data")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len())
                .to_string(),
            age_col,
        ],
        "Event" => {
            let last = o
                .get("lastTimestamp")
                .and_then(Value::as_str)
                .or_else(|| o.get("eventTime").and_then(Value::as_str));
            vec![
                age(last),
                s(o, "/type").into(),
                s(o, "/reason").into(),
                format!(
                    "{}/{}",
                    s(o, "/involvedObject/kind").to_lowercase(),
                    s(o, "/involvedObject/name")
                ),
                s(o, "/message").into(),
            ]
        }
        "PersistentVolumeClaim" => vec![
            name,
            s(o, "/status/phase").into(),
            s(o, "/spec/volumeName").into(),
            s(o, "/status/capacity/storage").into(),
            access_modes(o.pointer("/spec/accessModes")),
            s(o, "/spec/storageClassName").into(),
            age_col,
        ],
        "PersistentVolume" => {
            let claim = match s(o, "/spec/claimRef/name") {
                "" => String::new(),
                c => format!("{}/{c}", s(o, "/spec/claimRef/namespace")),
            };
            vec![
                name,
                s(o, "/spec/capacity/storage").into(),
                access_modes(o.pointer("/spec/accessModes")),
                s(o, "/spec/persistentVolumeReclaimPolicy").into(),
                s(o, "/status/phase").into(),
                claim,
                s(o, "/spec/storageClassName").into(),
                age_col,
            ]
        }
        "Ingress" => {
            let hosts: Vec<String> = o
                .pointer("/spec/rules")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .map(|r| s(r, "/host").to_string())
                        .map(|h| if h.is_empty() { "*".into() } else { h })
                        .collect()
                })
                .unwrap_or_default();
            let addr: Vec<String> = o
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(|i| s(i, "/ip").to_string()).collect())
                .unwrap_or_default();
            let ports = if o
                .pointer("/spec/tls")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty())
            {
                "80, 443"
            } else {
                "80"
            };
            vec![
                name,
                or_none(s(o, "/spec/ingressClassName").into()),
                or_none(hosts.join(",")),
                addr.join(","),
                ports.into(),
                age_col,
            ]
        }
        "Endpoints" => {
            let mut eps = Vec::new();
            for sub in o
                .get("subsets")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                for a in sub
                    .get("addresses")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    for p in sub
                        .get("ports")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        eps.push(format!("{}:{}", s(a, "/ip"), n(p, "/port")));
                    }
                }
            }
            vec![name, or_none(eps.join(",")), age_col]
        }
        "Lease" => vec![name, s(o, "/spec/holderIdentity").into(), age_col],
        "EndpointSlice" => {
            let ports: Vec<String> = o
                .pointer("/ports")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(|p| n(p, "/port").to_string()).collect())
                .unwrap_or_default();
            let eps: Vec<String> = o
                .pointer("/endpoints")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(|e| s(e, "/addresses/0").to_string()).collect())
                .unwrap_or_default();
            vec![
                name,
                s(o, "/addressType").into(),
                or_none(ports.join(",")),
                or_none(eps.join(",")),
                age_col,
            ]
        }
        "IngressClass" => vec![
            name,
            s(o, "/spec/controller").into(),
            "<none>".into(),
            age_col,
        ],
        "IPAddress" => vec![
            name,
            format!(
                "{}/{}/{}",
                s(o, "/spec/parentRef/resource"),
                s(o, "/spec/parentRef/namespace"),
                s(o, "/spec/parentRef/name")
            ),
        ],
        "HorizontalPodAutoscaler" => vec![
            name,
            format!(
                "{}/{}",
                s(o, "/spec/scaleTargetRef/kind"),
                s(o, "/spec/scaleTargetRef/name")
            ),
            hpa_targets(o),
            n(o, "/spec/minReplicas").to_string(),
            n(o, "/spec/maxReplicas").to_string(),
            n(o, "/status/currentReplicas").to_string(),
            age_col,
        ],
        _ => vec![name, age_col],
    };
    if wide {
        match res.kind {
            "Pod" => r.extend([
                or_none(s(o, "/status/podIP").into()),
                or_none(s(o, "/spec/nodeName").into()),
                "<none>".into(),
                "<none>".into(),
            ]),
            "Service" => r.push(or_none(map_string(o.pointer("/spec/selector")))),
            "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Job" => {
                let (c, i) = containers_and_images(o.pointer("/spec/template/spec"));
                r.extend([c, i, or_none(selector_string(o.pointer("/spec/selector")))]);
            }
            "Node" => {
                let addr = |t: &str| {
                    o.pointer("/status/addresses")
                        .and_then(Value::as_array)
                        .and_then(|a| a.iter().find(|x| x["type"] == t))
                        .map(|x| s(x, "/address").to_string())
                        .unwrap_or_else(|| "<none>".into())
                };
                r.extend([
                    addr("InternalIP"),
                    addr("ExternalIP"),
                    s(o, "/status/nodeInfo/osImage").into(),
                    s(o, "/status/nodeInfo/kernelVersion").into(),
                    s(o, "/status/nodeInfo/containerRuntimeVersion").into(),
                ]);
            }
            _ => {}
        }
    }
    r
}

fn access_modes(v: Option<&Value>) -> String {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|m| match m.as_str().unwrap_or_default() {
                    "ReadWriteOnce" => "RWO",
                    "ReadOnlyMany" => "ROX",
                    "ReadWriteMany" => "RWX",
                    "ReadWriteOncePod" => "RWOP",
                    _ => "?",
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// Render rows as an aligned table (three spaces between columns, as kubectl).
pub fn table(headers: &[String], rows: &[Vec<String>]) -> String {
    let cols = headers.len();
    let mut width = vec![0; cols];
    for r in std::iter::once(headers).chain(rows.iter().map(Vec::as_slice)) {
        for (i, c) in r.iter().enumerate().take(cols) {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(headers).chain(rows.iter().map(Vec::as_slice)) {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate().take(cols) {
            if i + 1 == cols {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}   ", w = width[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// YAML for `-o yaml`.
pub fn yaml(v: &Value) -> String {
    serde_saphyr::to_string(v).unwrap_or_default()
}

/// kubectl's TARGETS column of an HPA: `current/target` per metric
/// (`cpu: 40%/50%`, `1500m/1`), `<unknown>` for a current value not known.
fn hpa_targets(o: &Value) -> String {
    let specs = o
        .pointer("/spec/metrics")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let current = o
        .pointer("/status/currentMetrics")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let parts: Vec<String> = specs
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let cur = current.get(i);
            match s(m, "/type") {
                "Resource" => {
                    let name = s(m, "/resource/name");
                    let t = m.pointer("/resource/target").cloned().unwrap_or_default();
                    if t["type"] == "Utilization" {
                        let c = cur
                            .and_then(|c| c.pointer("/resource/current/averageUtilization"))
                            .map(|v| format!("{v}%"))
                            .unwrap_or_else(|| "<unknown>".into());
                        format!("{name}: {c}/{}%", t["averageUtilization"])
                    } else {
                        let c = cur
                            .and_then(|c| c.pointer("/resource/current/averageValue"))
                            .and_then(Value::as_str)
                            .unwrap_or("<unknown>")
                            .to_string();
                        format!("{name}: {c}/{}", t["averageValue"].as_str().unwrap_or(""))
                    }
                }
                _ => {
                    let c = cur
                        .and_then(|c| c.pointer("/pods/current/averageValue"))
                        .and_then(Value::as_str)
                        .unwrap_or("<unknown>")
                        .to_string();
                    format!("{c}/{}", s(m, "/pods/target/averageValue"))
                }
            }
        })
        .collect();
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(200), "3m20s");
        assert_eq!(human_duration(3600), "60m");
        assert_eq!(human_duration(4 * 3600 + 60), "4h1m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(3 * 86400), "3d");
        assert_eq!(human_duration(800 * 86400), "2y");
    }

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["NAME".into(), "AGE".into()],
            &[vec!["a-long-name".into(), "5s".into()]],
        );
        assert_eq!(t, "NAME          AGE\na-long-name   5s\n");
    }
}
