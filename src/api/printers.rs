//! Server-side printing: the columns kube-apiserver's printers give each
//! kind, and each object's cells. The API server serves them as
//! `meta.k8s.io` Tables (what `kubectl get` shows); `wkctl` prints the same
//! Tables, so every client shows the same columns. Pure: no I/O.

use serde_json::{json, Value};

use super::resources::Resource;
use super::selector::LabelSelector;

/// One column of a Table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    /// Title-case, as kube-apiserver names it (kubectl prints it upper-case).
    pub name: &'static str,
    /// `string`, `integer`, `date`.
    pub ty: &'static str,
    /// `name` for the object's name column.
    pub format: &'static str,
    pub description: &'static str,
    /// 0: always shown; 1: with `-o wide`.
    pub priority: u8,
}

const fn col(name: &'static str, ty: &'static str, description: &'static str) -> Column {
    Column {
        name,
        ty,
        format: "",
        description,
        priority: 0,
    }
}

const fn wide(name: &'static str, description: &'static str) -> Column {
    Column {
        name,
        ty: "string",
        format: "",
        description,
        priority: 1,
    }
}

const NAME: Column = Column {
    name: "Name",
    ty: "string",
    format: "name",
    description: "Name must be unique within a namespace.",
    priority: 0,
};
const AGE: Column = col(
    "Age",
    "string",
    "CreationTimestamp is a timestamp representing the server time when this object was created.",
);
const CREATED_AT: Column = Column {
    name: "Created At",
    ty: "date",
    format: "",
    description: "CreationTimestamp is a timestamp representing the server time when this object was created.",
    priority: 0,
};
const CONTAINERS: Column = wide("Containers", "Names of each container in the template.");
const IMAGES: Column = wide(
    "Images",
    "Images referenced by each container in the template.",
);
const SELECTOR: Column = wide("Selector", "Label selector of the pods.");

/// The columns of `res`, in order (wide ones included, with priority 1).
pub fn columns(res: &Resource) -> Vec<Column> {
    if let Some(custom) = super::crd::of(res) {
        // kube-apiserver: the CRD's columns, or NAME and AGE without any
        let mut cols = vec![NAME];
        if custom.columns.is_empty() {
            cols.push(AGE);
        }
        cols.extend(custom.columns.iter().map(|c| c.column));
        return cols;
    }
    match res.kind {
        "Pod" => vec![
            NAME,
            col("Ready", "string", "The aggregate readiness state of this pod for accepting traffic."),
            col("Status", "string", "The aggregate status of the containers in this pod."),
            col("Restarts", "string", "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
            AGE,
            wide("IP", "IP address allocated to the pod."),
            wide("Node", "Name of the Node this pod is bound to."),
            wide("Nominated Node", "Name of the node where the pod is nominated to run."),
            wide("Readiness Gates", "Readiness gates of the pod that are satisfied."),
        ],
        "Service" => vec![
            NAME,
            col("Type", "string", "How the Service is exposed."),
            col("Cluster-IP", "string", "The IP address of the Service."),
            col("External-IP", "string", "External addresses of the Service."),
            col("Port(s)", "string", "The ports exposed by the Service."),
            AGE,
            SELECTOR,
        ],
        "Deployment" => vec![
            NAME,
            col("Ready", "string", "Number of the pod with ready state."),
            col("Up-to-date", "integer", "Total number of non-terminated pods targeted by this deployment that have the desired template spec."),
            col("Available", "integer", "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment."),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        "ReplicaSet" => vec![
            NAME,
            col("Desired", "integer", "Number of desired pods."),
            col("Current", "integer", "Number of actual replicas."),
            col("Ready", "integer", "The number of ready replicas for this replica set."),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        "StatefulSet" => vec![
            NAME,
            col("Ready", "string", "Number of the pod with ready state."),
            AGE,
            CONTAINERS,
            IMAGES,
        ],
        "DaemonSet" => vec![
            NAME,
            col("Desired", "integer", "The total number of nodes that should be running the daemon pod."),
            col("Current", "integer", "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod."),
            col("Ready", "integer", "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready."),
            col("Up-to-date", "integer", "The total number of nodes that are running updated daemon pod."),
            col("Available", "integer", "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available."),
            col("Node Selector", "string", "The node selector of the pod template."),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        "Job" => vec![
            NAME,
            col("Status", "string", "Status of the job."),
            col("Completions", "string", "The completion status of the job."),
            col("Duration", "string", "Time required to complete the job."),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        "CronJob" => vec![
            NAME,
            col("Schedule", "string", "The schedule in Cron format."),
            col("Timezone", "string", "The time zone name for the given schedule."),
            col("Suspend", "boolean", "Whether subsequent executions are suspended."),
            col("Active", "integer", "The number of currently running jobs."),
            col("Last Schedule", "string", "Information when was the last time the job was successfully scheduled."),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        "Node" => vec![
            NAME,
            col("Status", "string", "The status of the node."),
            col("Roles", "string", "The roles of the node."),
            AGE,
            col("Version", "string", "Kubelet Version reported by the node."),
            wide("Internal-IP", "List of internal IPs of the node."),
            wide("External-IP", "List of external IPs of the node."),
            wide("OS-Image", "OS Image reported by the node from /etc/os-release."),
            wide("Kernel-Version", "Kernel Version reported by the node from 'uname -r'."),
            wide("Container-Runtime", "Container Runtime Version reported by the node."),
        ],
        "Namespace" => vec![
            NAME,
            col("Status", "string", "The status of the namespace."),
            AGE,
        ],
        "ConfigMap" => vec![NAME, col("Data", "integer", "The number of keys."), AGE],
        "Secret" => vec![
            NAME,
            col("Type", "string", "The type of secret."),
            col("Data", "integer", "The number of keys."),
            AGE,
        ],
        "ServiceAccount" => vec![
            NAME,
            col("Secrets", "integer", "The number of secrets of the service account."),
            AGE,
        ],
        "Event" => vec![
            col("Last Seen", "string", "Time when this event was last observed."),
            col("Type", "string", "Type of this event (Normal, Warning)."),
            col("Reason", "string", "Why the action was taken."),
            col("Object", "string", "The object this event is about."),
            col("Message", "string", "A human-readable description of the status of this operation."),
            wide("Subobject", "A part of the object the event is about."),
            wide("Source", "The component reporting this event."),
            wide("First Seen", "The time at which the event was first recorded."),
            wide("Count", "The number of times this event has occurred."),
            Column { priority: 1, ..NAME },
        ],
        "PersistentVolumeClaim" => vec![
            NAME,
            col("Status", "string", "The phase of the claim."),
            col("Volume", "string", "The binding reference to the PersistentVolume."),
            col("Capacity", "string", "The actual resources of the underlying volume."),
            col("Access Modes", "string", "The actual access modes the volume backing the claim has."),
            col("StorageClass", "string", "The name of the StorageClass required by the claim."),
            col("VolumeAttributesClass", "string", "The VolumeAttributesClass of the claim."),
            AGE,
            wide("VolumeMode", "What type of volume is required by the claim."),
        ],
        "PersistentVolume" => vec![
            NAME,
            col("Capacity", "string", "The capacity of the volume."),
            col("Access Modes", "string", "The ways the volume can be mounted."),
            col("Reclaim Policy", "string", "What happens to the volume when released."),
            col("Status", "string", "The phase of the volume."),
            col("Claim", "string", "The claim bound to the volume."),
            col("StorageClass", "string", "The name of the StorageClass of the volume."),
            col("VolumeAttributesClass", "string", "The VolumeAttributesClass of the volume."),
            col("Reason", "string", "Why the volume is in this phase."),
            AGE,
            wide("VolumeMode", "What type of volume this is."),
        ],
        "Ingress" => vec![
            NAME,
            col("Class", "string", "The name of the IngressClass."),
            col("Hosts", "string", "Hosts that incoming requests are matched against."),
            col("Address", "string", "Address is a list containing ingress points for the load-balancer."),
            col("Ports", "string", "Ports of TLS configurations that open."),
            AGE,
        ],
        "IngressClass" => vec![
            NAME,
            col("Controller", "string", "Controller that is responsible for handling this class."),
            col("Parameters", "string", "A reference to a resource with additional parameters."),
            AGE,
        ],
        "Endpoints" => vec![
            NAME,
            col("Endpoints", "string", "Endpoints of the Service."),
            AGE,
        ],
        "EndpointSlice" => vec![
            NAME,
            col("AddressType", "string", "The type of address carried by this EndpointSlice."),
            col("Ports", "string", "Network ports exposed by the endpoints in this slice."),
            col("Endpoints", "string", "Endpoints in this slice."),
            AGE,
        ],
        "IPAddress" => vec![
            NAME,
            col("ParentRef", "string", "The object this address is assigned to."),
        ],
        "PodDisruptionBudget" => vec![
            NAME,
            col("Min Available", "string", "The minimum number of pods that must be available."),
            col("Max Unavailable", "string", "The maximum number of pods that may be unavailable."),
            col("Allowed Disruptions", "integer", "Calculated number of pods that may be disrupted at this time."),
            AGE,
        ],
        "ControllerRevision" => vec![
            NAME,
            col("Controller", "string", "The owner of the revision."),
            col("Revision", "integer", "The revision number."),
            AGE,
        ],
        "Lease" => vec![
            NAME,
            col("Holder", "string", "The holder of the lease."),
            AGE,
        ],
        "HorizontalPodAutoscaler" => vec![
            NAME,
            col("Reference", "string", "The object being scaled."),
            col("Targets", "string", "The current and target values of the metrics."),
            col("MinPods", "string", "The lower limit for the number of replicas."),
            col("MaxPods", "integer", "The upper limit for the number of replicas."),
            col("Replicas", "integer", "Current number of replicas of pods managed by this autoscaler."),
            AGE,
        ],
        "Role" | "ClusterRole" => vec![NAME, CREATED_AT],
        "RoleBinding" | "ClusterRoleBinding" => vec![
            NAME,
            col("Role", "string", "The role the binding grants."),
            AGE,
            wide("Users", "Users in the binding."),
            wide("Groups", "Groups in the binding."),
            wide("ServiceAccounts", "ServiceAccounts in the binding."),
        ],
        _ => vec![NAME, CREATED_AT],
    }
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

fn arr<'a>(v: &'a Value, p: &str) -> &'a [Value] {
    v.pointer(p)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The STATUS column of a pod, as kubectl's printer reasons about it.
fn pod_status(pod: &Value) -> String {
    if pod
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
    {
        return "Terminating".into();
    }
    let init = arr(pod, "/status/initContainerStatuses");
    for (i, c) in init.iter().enumerate() {
        if let Some(t) = c.pointer("/state/terminated") {
            if t["exitCode"].as_i64() == Some(0) {
                continue;
            }
            return match t["reason"].as_str() {
                Some(r) if !r.is_empty() => format!("Init:{r}"),
                _ => format!("Init:ExitCode:{}", t["exitCode"].as_i64().unwrap_or(0)),
            };
        }
        if let Some(r) = c.pointer("/state/waiting/reason").and_then(Value::as_str) {
            if r != "PodInitializing" {
                return format!("Init:{r}");
            }
        }
        if c.pointer("/state/running").is_some() || c.pointer("/state/waiting").is_some() {
            return format!("Init:{i}/{}", arr(pod, "/spec/initContainers").len());
        }
    }
    for c in arr(pod, "/status/containerStatuses").iter().rev() {
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

/// The RESTARTS column: the count, and how long ago the last restart was.
fn pod_restarts(pod: &Value) -> String {
    let statuses = arr(pod, "/status/containerStatuses");
    let restarts: i64 = statuses
        .iter()
        .map(|c| c["restartCount"].as_i64().unwrap_or(0))
        .sum();
    let last = statuses
        .iter()
        .filter_map(|c| c.pointer("/lastState/terminated/finishedAt")?.as_str())
        .max();
    match last {
        Some(t) if restarts > 0 => format!("{restarts} ({} ago)", age(Some(t))),
        _ => restarts.to_string(),
    }
}

fn service_ports(svc: &Value) -> String {
    or_none(
        arr(svc, "/spec/ports")
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

fn node_status(node: &Value) -> String {
    let ready = arr(node, "/status/conditions")
        .iter()
        .find(|c| c["type"] == "Ready")
        .map(|c| c["status"] == "True");
    let mut status = match ready {
        Some(true) => "Ready".to_string(),
        Some(false) => "NotReady".to_string(),
        None => "Unknown".to_string(),
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

fn containers_and_images(spec: &Value) -> (String, String) {
    let cs = arr(spec, "/containers");
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

fn access_modes(v: &Value, p: &str) -> String {
    arr(v, p)
        .iter()
        .map(|m| match m.as_str().unwrap_or_default() {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            _ => "?",
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// kubectl's TARGETS column of an HPA: `current/target` per metric
/// (`cpu: 40%/50%`, `1500m/1`), `<unknown>` for a current value not known.
fn hpa_targets(o: &Value) -> String {
    let current = arr(o, "/status/currentMetrics");
    let parts: Vec<String> = arr(o, "/spec/metrics")
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

fn subjects(o: &Value, kind: &str) -> String {
    arr(o, "/subjects")
        .iter()
        .filter(|x| x["kind"] == kind)
        .map(|x| match (kind, s(x, "/namespace")) {
            ("ServiceAccount", ns) if !ns.is_empty() => format!("{ns}/{}", s(x, "/name")),
            _ => s(x, "/name").to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The cells of `o`'s row, one per column of [`columns`].
pub fn cells(res: &Resource, o: &Value) -> Vec<Value> {
    let name = json!(s(o, "/metadata/name"));
    let age_col = json!(age(o
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)));
    let created = json!(s(o, "/metadata/creationTimestamp"));
    let text = |x: String| json!(x);
    if let Some(custom) = super::crd::of(res) {
        let mut cells = vec![name];
        if custom.columns.is_empty() {
            cells.push(age_col);
        }
        for c in &custom.columns {
            let v = o.pointer(&c.pointer).cloned().unwrap_or(Value::Null);
            cells.push(match (c.column.ty, &v) {
                ("date", Value::String(ts)) => json!(age(Some(ts))),
                (_, Value::Object(_) | Value::Array(_)) => json!(v.to_string()),
                _ => v,
            });
        }
        return cells;
    }
    match res.kind {
        "Pod" => {
            let statuses = arr(o, "/status/containerStatuses");
            let total = arr(o, "/spec/containers").len();
            let ready = statuses.iter().filter(|c| c["ready"] == true).count();
            let gates = arr(o, "/spec/readinessGates");
            let gates = if gates.is_empty() {
                "<none>".to_string()
            } else {
                let conds = arr(o, "/status/conditions");
                let met = gates
                    .iter()
                    .filter(|g| {
                        conds
                            .iter()
                            .any(|c| c["type"] == g["conditionType"] && c["status"] == "True")
                    })
                    .count();
                format!("{met}/{}", gates.len())
            };
            vec![
                name,
                text(format!("{ready}/{total}")),
                text(pod_status(o)),
                text(pod_restarts(o)),
                age_col,
                text(or_none(s(o, "/status/podIP").into())),
                text(or_none(s(o, "/spec/nodeName").into())),
                text(or_none(s(o, "/status/nominatedNodeName").into())),
                text(gates),
            ]
        }
        "Service" => {
            let lb: Vec<String> = arr(o, "/status/loadBalancer/ingress")
                .iter()
                .map(|i| s(i, "/ip").to_string())
                .collect();
            let external = match s(o, "/spec/type") {
                "ExternalName" => s(o, "/spec/externalName").to_string(),
                "LoadBalancer" if lb.is_empty() => "<pending>".into(),
                _ => lb.join(","),
            };
            vec![
                name,
                json!(s(o, "/spec/type")),
                text(or_none(s(o, "/spec/clusterIP").into())),
                text(or_none(external)),
                text(service_ports(o)),
                age_col,
                text(or_none(map_string(o.pointer("/spec/selector")))),
            ]
        }
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Job" | "CronJob" => {
            let template = if res.kind == "CronJob" {
                o.pointer("/spec/jobTemplate/spec/template/spec")
            } else {
                o.pointer("/spec/template/spec")
            }
            .cloned()
            .unwrap_or(Value::Null);
            let (containers, images) = containers_and_images(&template);
            let selector = text(or_none(selector_string(o.pointer(
                if res.kind == "CronJob" {
                    "/spec/jobTemplate/spec/selector"
                } else {
                    "/spec/selector"
                },
            ))));
            let mut row = match res.kind {
                "Deployment" => vec![
                    name,
                    text(format!(
                        "{}/{}",
                        n(o, "/status/readyReplicas"),
                        n(o, "/spec/replicas")
                    )),
                    json!(n(o, "/status/updatedReplicas")),
                    json!(n(o, "/status/availableReplicas")),
                    age_col,
                ],
                "ReplicaSet" => vec![
                    name,
                    json!(n(o, "/spec/replicas")),
                    json!(n(o, "/status/replicas")),
                    json!(n(o, "/status/readyReplicas")),
                    age_col,
                ],
                "StatefulSet" => vec![
                    name,
                    text(format!(
                        "{}/{}",
                        n(o, "/status/readyReplicas"),
                        n(o, "/spec/replicas")
                    )),
                    age_col,
                ],
                "DaemonSet" => vec![
                    name,
                    json!(n(o, "/status/desiredNumberScheduled")),
                    json!(n(o, "/status/currentNumberScheduled")),
                    json!(n(o, "/status/numberReady")),
                    json!(n(o, "/status/updatedNumberScheduled")),
                    json!(n(o, "/status/numberAvailable")),
                    text(or_none(map_string(
                        o.pointer("/spec/template/spec/nodeSelector"),
                    ))),
                    age_col,
                ],
                "Job" => {
                    let conds = arr(o, "/status/conditions");
                    let has = |t: &str| {
                        conds
                            .iter()
                            .any(|c| c["type"] == t && c["status"] == "True")
                    };
                    let status = if has("Complete") {
                        "Complete"
                    } else if has("Failed") {
                        "Failed"
                    } else if has("Suspended") {
                        "Suspended"
                    } else {
                        "Running"
                    };
                    let duration = match (
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
                        json!(status),
                        text(format!(
                            "{}/{}",
                            n(o, "/status/succeeded"),
                            n(o, "/spec/completions").max(1)
                        )),
                        text(duration),
                        age_col,
                    ]
                }
                _ => vec![
                    name,
                    json!(s(o, "/spec/schedule")),
                    text(or_none(s(o, "/spec/timeZone").into())),
                    json!(o.pointer("/spec/suspend") == Some(&Value::Bool(true))),
                    json!(arr(o, "/status/active").len()),
                    text(
                        o.pointer("/status/lastScheduleTime")
                            .and_then(Value::as_str)
                            .map(|t| age(Some(t)))
                            .unwrap_or_else(|| "<none>".into()),
                    ),
                    age_col,
                ],
            };
            row.push(text(containers));
            row.push(text(images));
            if res.kind != "StatefulSet" {
                row.push(selector);
            }
            row
        }
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
            let addr = |t: &str| {
                or_none(
                    arr(o, "/status/addresses")
                        .iter()
                        .filter(|x| x["type"] == t)
                        .map(|x| s(x, "/address").to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                )
            };
            vec![
                name,
                text(node_status(o)),
                text(or_none(roles.join(","))),
                age_col,
                json!(s(o, "/status/nodeInfo/kubeletVersion")),
                text(addr("InternalIP")),
                text(addr("ExternalIP")),
                json!(s(o, "/status/nodeInfo/osImage")),
                json!(s(o, "/status/nodeInfo/kernelVersion")),
                json!(s(o, "/status/nodeInfo/containerRuntimeVersion")),
            ]
        }
        "Namespace" => vec![name, json!(s(o, "/status/phase")), age_col],
        "ConfigMap" => {
            let count = o
                .get("data")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len())
                + o.get("binaryData")
                    .and_then(Value::as_object)
                    .map_or(0, |m| m.len());
            vec![name, json!(count), age_col]
        }
        "Secret" => vec![
            name,
            json!(s(o, "/type")),
            json!(o
                .get("data")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len())),
            age_col,
        ],
        "ServiceAccount" => vec![name, json!(arr(o, "/secrets").len()), age_col],
        "Event" => {
            let last = o
                .get("lastTimestamp")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .or_else(|| o.get("eventTime").and_then(Value::as_str));
            vec![
                text(age(last)),
                json!(s(o, "/type")),
                json!(s(o, "/reason")),
                text(format!(
                    "{}/{}",
                    s(o, "/involvedObject/kind").to_lowercase(),
                    s(o, "/involvedObject/name")
                )),
                json!(s(o, "/message")),
                json!(s(o, "/involvedObject/fieldPath")),
                text(format!(
                    "{}{}",
                    s(o, "/source/component"),
                    match s(o, "/source/host") {
                        "" => String::new(),
                        h => format!(", {h}"),
                    }
                )),
                text(age(o.get("firstTimestamp").and_then(Value::as_str))),
                json!(n(o, "/count")),
                name,
            ]
        }
        "PersistentVolumeClaim" => vec![
            name,
            json!(s(o, "/status/phase")),
            json!(s(o, "/spec/volumeName")),
            json!(s(o, "/status/capacity/storage")),
            text(access_modes(o, "/status/accessModes")),
            json!(s(o, "/spec/storageClassName")),
            text(or_none(s(o, "/spec/volumeAttributesClassName").into())),
            age_col,
            json!(s(o, "/spec/volumeMode")),
        ],
        "PersistentVolume" => {
            let claim = match s(o, "/spec/claimRef/name") {
                "" => String::new(),
                c => format!("{}/{c}", s(o, "/spec/claimRef/namespace")),
            };
            vec![
                name,
                json!(s(o, "/spec/capacity/storage")),
                text(access_modes(o, "/spec/accessModes")),
                json!(s(o, "/spec/persistentVolumeReclaimPolicy")),
                json!(s(o, "/status/phase")),
                text(claim),
                json!(s(o, "/spec/storageClassName")),
                text(or_none(s(o, "/spec/volumeAttributesClassName").into())),
                json!(s(o, "/status/reason")),
                age_col,
                json!(s(o, "/spec/volumeMode")),
            ]
        }
        "Ingress" => {
            let hosts: Vec<String> = arr(o, "/spec/rules")
                .iter()
                .map(|r| match s(r, "/host") {
                    "" => "*".to_string(),
                    h => h.to_string(),
                })
                .collect();
            let addr: Vec<String> = arr(o, "/status/loadBalancer/ingress")
                .iter()
                .map(|i| s(i, "/ip").to_string())
                .collect();
            let ports = if arr(o, "/spec/tls").is_empty() {
                "80"
            } else {
                "80, 443"
            };
            vec![
                name,
                text(or_none(s(o, "/spec/ingressClassName").into())),
                text(or_none(hosts.join(","))),
                text(addr.join(",")),
                json!(ports),
                age_col,
            ]
        }
        "IngressClass" => vec![
            name,
            json!(s(o, "/spec/controller")),
            text(match s(o, "/spec/parameters/name") {
                "" => "<none>".to_string(),
                p => format!("{}/{p}", s(o, "/spec/parameters/kind")),
            }),
            age_col,
        ],
        "Endpoints" => {
            let mut eps = Vec::new();
            for sub in arr(o, "/subsets") {
                for a in arr(sub, "/addresses") {
                    for p in arr(sub, "/ports") {
                        eps.push(format!("{}:{}", s(a, "/ip"), n(p, "/port")));
                    }
                }
            }
            vec![name, text(or_none(eps.join(","))), age_col]
        }
        "EndpointSlice" => vec![
            name,
            json!(s(o, "/addressType")),
            text(or_none(
                arr(o, "/ports")
                    .iter()
                    .map(|p| n(p, "/port").to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            )),
            text(or_none(
                arr(o, "/endpoints")
                    .iter()
                    .map(|e| s(e, "/addresses/0").to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            )),
            age_col,
        ],
        "IPAddress" => vec![
            name,
            text(format!(
                "{}/{}/{}",
                s(o, "/spec/parentRef/resource"),
                s(o, "/spec/parentRef/namespace"),
                s(o, "/spec/parentRef/name")
            )),
        ],
        "PodDisruptionBudget" => {
            let bound = |p: &str| match o.pointer(p) {
                Some(Value::String(x)) => x.clone(),
                Some(Value::Number(x)) => x.to_string(),
                _ => "N/A".into(),
            };
            vec![
                name,
                text(bound("/spec/minAvailable")),
                text(bound("/spec/maxUnavailable")),
                json!(n(o, "/status/disruptionsAllowed")),
                age_col,
            ]
        }
        "ControllerRevision" => {
            let owner = o["metadata"]["ownerReferences"]
                .as_array()
                .and_then(|r| r.iter().find(|r| r["controller"] == true))
                .map(|r| {
                    let group = r["apiVersion"]
                        .as_str()
                        .and_then(|a| a.split_once('/'))
                        .map(|(g, _)| format!(".{g}"))
                        .unwrap_or_default();
                    format!(
                        "{}{group}/{}",
                        r["kind"].as_str().unwrap_or_default().to_lowercase(),
                        r["name"].as_str().unwrap_or_default()
                    )
                })
                .unwrap_or_else(|| "<none>".into());
            vec![name, text(owner), json!(n(o, "/revision")), age_col]
        }
        "Lease" => vec![name, json!(s(o, "/spec/holderIdentity")), age_col],
        "HorizontalPodAutoscaler" => vec![
            name,
            text(format!(
                "{}/{}",
                s(o, "/spec/scaleTargetRef/kind"),
                s(o, "/spec/scaleTargetRef/name")
            )),
            text(hpa_targets(o)),
            text(n(o, "/spec/minReplicas").to_string()),
            json!(n(o, "/spec/maxReplicas")),
            json!(n(o, "/status/currentReplicas")),
            age_col,
        ],
        "RoleBinding" | "ClusterRoleBinding" => vec![
            name,
            text(format!(
                "{}/{}",
                s(o, "/roleRef/kind"),
                s(o, "/roleRef/name")
            )),
            age_col,
            text(subjects(o, "User")),
            text(subjects(o, "Group")),
            text(subjects(o, "ServiceAccount")),
        ],
        _ => vec![name, created],
    }
}

/// A cell as kubectl prints it.
pub fn cell_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "<none>".into(),
        Value::Bool(b) => if *b { "True" } else { "False" }.into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resources::{lookup, RESOURCES};

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
    fn every_kind_has_a_cell_per_column() {
        let obj = json!({"metadata": {"name": "x", "creationTimestamp": "2026-01-01T00:00:00Z"}});
        for res in RESOURCES.iter().filter(|r| !r.review) {
            assert_eq!(columns(res).len(), cells(res, &obj).len(), "{}", res.kind);
            assert_eq!(
                columns(res)
                    .iter()
                    .filter(|c| c.format == "name")
                    .count()
                    .min(1),
                1,
                "{}",
                res.kind
            );
        }
    }

    #[test]
    fn a_pod_row_reads_like_kubectl() {
        let pod = json!({"metadata": {"name": "web", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"nodeName": "n1", "containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.5", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 0, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 2, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        let c: Vec<String> = cells(lookup("pods").unwrap(), &pod)
            .iter()
            .map(cell_text)
            .collect();
        assert_eq!(&c[..4], ["web", "1/2", "CrashLoopBackOff", "2"]);
        assert_eq!(&c[5..7], ["10.0.0.5", "n1"]);
    }
}
