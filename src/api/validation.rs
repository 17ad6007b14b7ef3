//! Defaulting and validation per kind, as kube-apiserver does it.
//!
//! Every object is first decoded into its `k8s-openapi` type (so a wrong
//! field type is refused and the wire form is exactly Kubernetes') and encoded
//! back; defaults are then filled in and the result validated, collecting
//! every [`FieldError`] with the field path Kubernetes would report.

use serde::{de::DeserializeOwned, Serialize};
use serde_json::{json, Map, Value};

/// Namespaces that cannot be deleted, as in Kubernetes.
pub const UNDELETABLE_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

use super::error::{ApiError, FieldError};
use super::resources::Resource;
use super::selector::{check_label_key, check_label_value, LabelSelector};

/// Check a DNS-1123 subdomain (`a.b-c`, at most 253 characters).
pub fn check_dns_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 {
        return Err("must be no more than 253 characters".into());
    }
    let ok = s.split('.').all(|part| check_dns_label(part).is_ok());
    if ok {
        Ok(())
    } else {
        Err("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".into())
    }
}

/// Check a DNS-1123 label (`my-name`, at most 63 characters).
/// A name usable as one path segment (`ValidatePathSegmentName`).
pub fn check_path_segment(s: &str) -> Result<(), String> {
    if s == "." || s == ".." {
        return Err(format!("may not be '{s}'"));
    }
    for bad in ["/", "%"] {
        if s.contains(bad) {
            return Err(format!("may not contain '{bad}'"));
        }
    }
    Ok(())
}

pub fn check_dns_label(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
    if ok {
        Ok(())
    } else {
        Err("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')".into())
    }
}

/// Check a DNS-1035 label (starts with a letter), used for Service names.
pub fn check_dns1035_label(s: &str) -> Result<(), String> {
    check_dns_label(s).map_err(|_| ())
        .and_then(|_| if s.as_bytes()[0].is_ascii_lowercase() { Ok(()) } else { Err(()) })
        .map_err(|_| "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')".into())
}

fn get<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    v.pointer(path).filter(|v| !v.is_null())
}

fn str_at<'a>(v: &'a Value, path: &str) -> Option<&'a str> {
    get(v, path).and_then(Value::as_str)
}

fn arr<'a>(v: &'a Value, path: &str) -> &'a [Value] {
    get(v, path)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// Set `path` (a JSON pointer, `~1` standing for `/`) to `value` when it is
/// absent, creating parents.
pub fn default_at(v: &mut Value, path: &str, value: Value) {
    let mut cur = v;
    let parts: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(|p| p.replace("~1", "/").replace("~0", "~"))
        .collect();
    for (i, part) in parts.iter().enumerate() {
        if !cur.is_object() {
            if cur.is_null() {
                *cur = Value::Object(Map::new());
            } else {
                return;
            }
        }
        let obj = cur.as_object_mut().expect("object");
        if i == parts.len() - 1 {
            let slot = obj.entry(part.clone()).or_insert(Value::Null);
            if slot.is_null() {
                *slot = value;
            }
            return;
        }
        cur = obj
            .entry(part.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

fn decode<T: DeserializeOwned + Serialize>(res: &Resource, obj: Value) -> Result<Value, ApiError> {
    let typed: T = serde_json::from_value(obj).map_err(|e| {
        ApiError::BadRequest(format!(
            "{} in version {:?} cannot be handled as a {}: {e}",
            res.kind, res.version, res.kind
        ))
    })?;
    serde_json::to_value(&typed)
        .map_err(|e| ApiError::Internal(format!("encode {}: {e}", res.kind)))
}

/// Decode into the kind's k8s-openapi type and back: schema check plus the canonical form.
fn canonical(res: &Resource, obj: Value) -> Result<Value, ApiError> {
    use k8s_openapi::api::{
        apps::v1 as apps, autoscaling::v2 as autoscaling, batch::v1 as batch,
        coordination::v1 as coordination, core::v1 as core, discovery::v1 as discovery,
        networking::v1 as networking, policy::v1 as policy, rbac::v1 as rbac,
    };
    match res.kind {
        "CustomResourceDefinition" => decode::<
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
        >(res, obj),
        "PodDisruptionBudget" => decode::<policy::PodDisruptionBudget>(res, obj),
        "ControllerRevision" => decode::<apps::ControllerRevision>(res, obj),
        "Namespace" => decode::<core::Namespace>(res, obj),
        "Pod" => decode::<core::Pod>(res, obj),
        "Service" => decode::<core::Service>(res, obj),
        "Endpoints" => decode::<core::Endpoints>(res, obj),
        "ConfigMap" => decode::<core::ConfigMap>(res, obj),
        "Secret" => decode::<core::Secret>(res, obj),
        "Node" => decode::<core::Node>(res, obj),
        "Event" => decode::<core::Event>(res, obj),
        "PersistentVolume" => decode::<core::PersistentVolume>(res, obj),
        "PersistentVolumeClaim" => decode::<core::PersistentVolumeClaim>(res, obj),
        "Deployment" => decode::<apps::Deployment>(res, obj),
        "ReplicaSet" => decode::<apps::ReplicaSet>(res, obj),
        "StatefulSet" => decode::<apps::StatefulSet>(res, obj),
        "DaemonSet" => decode::<apps::DaemonSet>(res, obj),
        "Job" => decode::<batch::Job>(res, obj),
        "CronJob" => decode::<batch::CronJob>(res, obj),
        "Ingress" => decode::<networking::Ingress>(res, obj),
        "IngressClass" => decode::<networking::IngressClass>(res, obj),
        "IPAddress" => decode::<networking::IPAddress>(res, obj),
        "EndpointSlice" => decode::<discovery::EndpointSlice>(res, obj),
        "Lease" => decode::<coordination::Lease>(res, obj),
        "HorizontalPodAutoscaler" => decode::<autoscaling::HorizontalPodAutoscaler>(res, obj),
        "ServiceAccount" => decode::<core::ServiceAccount>(res, obj),
        "Role" => decode::<rbac::Role>(res, obj),
        "ClusterRole" => decode::<rbac::ClusterRole>(res, obj),
        "RoleBinding" => decode::<rbac::RoleBinding>(res, obj),
        "ClusterRoleBinding" => decode::<rbac::ClusterRoleBinding>(res, obj),
        other => Err(ApiError::Internal(format!("no schema for kind {other}"))),
    }
}

/// Canonicalize, default and validate `obj` (a create, or an update whose
/// previous state is `old`). Returns the object to store.
pub fn prepare(res: &Resource, obj: Value, old: Option<&Value>) -> Result<Value, ApiError> {
    if let Some(custom) = super::crd::of(res) {
        let mut errs = Vec::new();
        let obj = super::crd::prepare(&custom, obj, &mut errs);
        validate_meta(res, &obj, &mut errs);
        return if errs.is_empty() {
            Ok(obj)
        } else {
            Err(super::crd::invalid(&custom, &obj, errs))
        };
    }
    let mut obj = canonical(res, obj)?;
    apply_defaults(res, &mut obj);
    let mut errs = Vec::new();
    validate_meta(res, &obj, &mut errs);
    validate_kind(res, &obj, &mut errs);
    if let Some(old) = old {
        validate_update(res, &obj, old, &mut errs);
    }
    if errs.is_empty() {
        Ok(obj)
    } else {
        Err(ApiError::Invalid {
            kind: res.kind.to_string(),
            name: str_at(&obj, "/metadata/name")
                .unwrap_or_default()
                .to_string(),
            errors: errs,
        })
    }
}

// ---------------------------------------------------------------- defaults

fn default_image_pull_policy(image: &str) -> &'static str {
    let last = image.rsplit('/').next().unwrap_or(image);
    let last = last.split('@').next().unwrap_or(last);
    if image.contains('@') {
        return "IfNotPresent";
    }
    match last.split_once(':') {
        None => "Always",
        Some((_, "latest")) => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn default_pod_spec(spec: &mut Value, restart_policy: Option<&str>) {
    if let Some(rp) = restart_policy {
        default_at(spec, "/restartPolicy", json!(rp));
    }
    default_at(spec, "/dnsPolicy", json!("ClusterFirst"));
    default_at(spec, "/terminationGracePeriodSeconds", json!(30));
    default_at(spec, "/schedulerName", json!("default-scheduler"));
    default_at(spec, "/securityContext", json!({}));
    default_at(spec, "/enableServiceLinks", json!(true));
    for list in ["containers", "initContainers"] {
        if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in cs {
                let image = c
                    .get("image")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                if !image.is_empty() {
                    default_at(
                        c,
                        "/imagePullPolicy",
                        json!(default_image_pull_policy(&image)),
                    );
                }
                default_at(c, "/terminationMessagePath", json!("/dev/termination-log"));
                default_at(c, "/terminationMessagePolicy", json!("File"));
                if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports {
                        default_at(p, "/protocol", json!("TCP"));
                    }
                }
            }
        }
    }
}

fn apply_defaults(res: &Resource, obj: &mut Value) {
    match res.kind {
        "CustomResourceDefinition" => super::crd::default_crd(obj),
        "RoleBinding" | "ClusterRoleBinding" => {
            if let Some(subjects) = obj.get_mut("subjects").and_then(Value::as_array_mut) {
                for s in subjects {
                    if matches!(s["kind"].as_str(), Some("User" | "Group")) {
                        default_at(s, "/apiGroup", json!("rbac.authorization.k8s.io"));
                    }
                }
            }
        }
        "Namespace" => {
            default_at(obj, "/spec/finalizers", json!(["kubernetes"]));
            default_at(obj, "/status/phase", json!("Active"));
        }
        "Pod" => {
            if let Some(spec) = obj.get_mut("spec") {
                default_pod_spec(spec, Some("Always"));
            }
            default_at(obj, "/status/phase", json!("Pending"));
            let qos = super::qos::qos_class(obj);
            default_at(obj, "/status/qosClass", json!(qos));
        }
        "Service" => {
            default_at(obj, "/spec/type", json!("ClusterIP"));
            default_at(obj, "/spec/sessionAffinity", json!("None"));
            default_at(obj, "/spec/internalTrafficPolicy", json!("Cluster"));
            if let Some(ports) = obj.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
                for p in ports {
                    default_at(p, "/protocol", json!("TCP"));
                    if let Some(port) = p.get("port").cloned() {
                        default_at(p, "/targetPort", port);
                    }
                }
            }
        }
        "Secret" => {
            default_at(obj, "/type", json!("Opaque"));
            // stringData is write-only: merged into data, base64-encoded.
            if let Some(Value::Object(sd)) =
                obj.as_object_mut().and_then(|o| o.remove("stringData"))
            {
                use base64::Engine;
                for (k, v) in sd {
                    let enc = base64::engine::general_purpose::STANDARD
                        .encode(v.as_str().unwrap_or_default());
                    default_at(obj, "/data", json!({}));
                    if let Some(d) = obj.get_mut("data").and_then(Value::as_object_mut) {
                        d.insert(k, json!(enc));
                    }
                }
            }
        }
        "PersistentVolume" => {
            default_at(obj, "/spec/persistentVolumeReclaimPolicy", json!("Retain"));
            default_at(obj, "/spec/volumeMode", json!("Filesystem"));
            default_at(obj, "/status/phase", json!("Pending"));
        }
        "PersistentVolumeClaim" => {
            default_at(obj, "/spec/volumeMode", json!("Filesystem"));
            default_at(obj, "/status/phase", json!("Pending"));
        }
        "Deployment" => {
            default_at(obj, "/spec/replicas", json!(1));
            default_at(obj, "/spec/revisionHistoryLimit", json!(10));
            default_at(obj, "/spec/progressDeadlineSeconds", json!(600));
            default_at(obj, "/spec/strategy/type", json!("RollingUpdate"));
            if str_at(obj, "/spec/strategy/type") == Some("RollingUpdate") {
                default_at(obj, "/spec/strategy/rollingUpdate/maxSurge", json!("25%"));
                default_at(
                    obj,
                    "/spec/strategy/rollingUpdate/maxUnavailable",
                    json!("25%"),
                );
            }
            default_template(obj, Some("Always"));
        }
        "ReplicaSet" => {
            default_at(obj, "/spec/replicas", json!(1));
            default_template(obj, Some("Always"));
        }
        "StatefulSet" => {
            default_at(obj, "/spec/replicas", json!(1));
            default_at(obj, "/spec/podManagementPolicy", json!("OrderedReady"));
            default_at(obj, "/spec/revisionHistoryLimit", json!(10));
            default_at(obj, "/spec/updateStrategy/type", json!("RollingUpdate"));
            if str_at(obj, "/spec/updateStrategy/type") == Some("RollingUpdate") {
                default_at(
                    obj,
                    "/spec/updateStrategy/rollingUpdate/partition",
                    json!(0),
                );
            }
            default_at(
                obj,
                "/spec/persistentVolumeClaimRetentionPolicy",
                json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
            );
            if let Some(t) = obj
                .pointer_mut("/spec/volumeClaimTemplates")
                .and_then(Value::as_array_mut)
            {
                for c in t {
                    default_at(c, "/spec/volumeMode", json!("Filesystem"));
                }
            }
            default_template(obj, Some("Always"));
        }
        "DaemonSet" => {
            default_at(obj, "/spec/revisionHistoryLimit", json!(10));
            default_at(obj, "/spec/updateStrategy/type", json!("RollingUpdate"));
            if str_at(obj, "/spec/updateStrategy/type") == Some("RollingUpdate") {
                default_at(
                    obj,
                    "/spec/updateStrategy/rollingUpdate/maxUnavailable",
                    json!(1),
                );
                default_at(obj, "/spec/updateStrategy/rollingUpdate/maxSurge", json!(0));
            }
            default_template(obj, Some("Always"));
        }
        "Job" => {
            default_job_spec(obj, "/spec");
        }
        "CronJob" => {
            default_at(obj, "/spec/concurrencyPolicy", json!("Allow"));
            default_at(obj, "/spec/suspend", json!(false));
            default_at(obj, "/spec/successfulJobsHistoryLimit", json!(3));
            default_at(obj, "/spec/failedJobsHistoryLimit", json!(1));
            default_job_spec(obj, "/spec/jobTemplate/spec");
        }
        "HorizontalPodAutoscaler" => {
            default_at(obj, "/spec/minReplicas", json!(1));
            if arr(obj, "/spec/metrics").is_empty() {
                obj["spec"]["metrics"] = json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]);
            }
        }
        _ => {}
    }
}

fn default_template(obj: &mut Value, restart_policy: Option<&str>) {
    if let Some(spec) = obj.pointer_mut("/spec/template/spec") {
        default_pod_spec(spec, restart_policy);
    }
}

fn default_job_spec(obj: &mut Value, at: &str) {
    let Some(spec) = obj.pointer_mut(at) else {
        return;
    };
    if get(spec, "/completions").is_none() && get(spec, "/parallelism").is_none() {
        default_at(spec, "/completions", json!(1));
    }
    default_at(spec, "/parallelism", json!(1));
    default_at(spec, "/backoffLimit", json!(6));
    default_at(spec, "/completionMode", json!("NonIndexed"));
    default_at(spec, "/suspend", json!(false));
    default_at(spec, "/manualSelector", json!(false));
    if let Some(t) = spec.pointer_mut("/template/spec") {
        // Jobs get no restartPolicy default: it must be OnFailure or Never.
        default_pod_spec(t, None);
    }
}

/// Give a new Job (not using `manualSelector`) the generated selector and
/// template labels Kubernetes gives it, derived from its uid.
pub fn generate_job_selector(obj: &mut Value) {
    if obj.pointer("/spec/manualSelector") == Some(&json!(true))
        || get(obj, "/spec/selector").is_some()
    {
        return;
    }
    let uid = str_at(obj, "/metadata/uid").unwrap_or_default().to_string();
    let name = str_at(obj, "/metadata/name")
        .unwrap_or_default()
        .to_string();
    obj["spec"]["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
    for (k, v) in [
        ("batch.kubernetes.io/controller-uid", &uid),
        ("controller-uid", &uid),
        ("batch.kubernetes.io/job-name", &name),
        ("job-name", &name),
    ] {
        default_at(
            obj,
            &format!("/spec/template/metadata/labels/{}", k.replace('/', "~1")),
            json!(v),
        );
    }
}

// -------------------------------------------------------------- validation

fn validate_meta(res: &Resource, obj: &Value, errs: &mut Vec<FieldError>) {
    match str_at(obj, "/metadata/name") {
        None | Some("") => errs.push(FieldError::required("metadata.name")),
        Some(name) => {
            let check = match res.kind {
                "Namespace" => check_dns_label(name),
                "Service" => check_dns1035_label(name),
                "CronJob" if name.len() > 52 => Err("must be no more than 52 characters".into()),
                // RBAC names are path segments (`system:node`, `system:controller:x`)
                "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding" => {
                    check_path_segment(name)
                }
                _ => check_dns_subdomain(name),
            };
            if let Err(msg) = check {
                errs.push(FieldError::invalid("metadata.name", name, msg));
            }
        }
    }
    if res.namespaced && str_at(obj, "/metadata/namespace").is_none_or(str::is_empty) {
        errs.push(FieldError::required("metadata.namespace"));
    }
    validate_labels(obj.pointer("/metadata/labels"), "metadata.labels", errs);
    if let Some(ann) = get(obj, "/metadata/annotations").and_then(Value::as_object) {
        let total: usize = ann
            .iter()
            .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
            .sum();
        for k in ann.keys() {
            if let Err(msg) = check_label_key(k) {
                errs.push(FieldError::invalid("metadata.annotations", k, msg));
            }
        }
        if total > 256 * 1024 {
            errs.push(FieldError::invalid(
                "metadata.annotations",
                "",
                "may not be more than 262144 bytes",
            ));
        }
    }
}

fn validate_labels(labels: Option<&Value>, field: &str, errs: &mut Vec<FieldError>) {
    if let Some(m) = labels.and_then(Value::as_object) {
        for (k, v) in m {
            if let Err(msg) = check_label_key(k) {
                errs.push(FieldError::invalid(field, k, msg));
            }
            let v = v.as_str().unwrap_or_default();
            if let Err(msg) = check_label_value(v) {
                errs.push(FieldError::invalid(format!("{field}[{k}]"), v, msg));
            }
        }
    }
}

fn check_port(v: &Value, field: String, allow_zero: bool, errs: &mut Vec<FieldError>) {
    if let Some(n) = v.as_i64() {
        let lo = if allow_zero { 0 } else { 1 };
        if n < lo || n > 65535 {
            errs.push(FieldError::invalid(
                field,
                n,
                format!("must be between {lo} and 65535, inclusive"),
            ));
        }
    }
}

fn validate_pod_spec(
    spec: Option<&Value>,
    path: &str,
    restart_policies: &[&str],
    errs: &mut Vec<FieldError>,
) {
    let Some(spec) = spec else {
        errs.push(FieldError::required(path));
        return;
    };
    let containers = arr(spec, "/containers");
    if containers.is_empty() {
        errs.push(FieldError::required(format!("{path}.containers")));
    }
    let volumes: Vec<&str> = arr(spec, "/volumes")
        .iter()
        .filter_map(|v| str_at(v, "/name"))
        .collect();
    for (i, v) in volumes.iter().enumerate() {
        if volumes[..i].contains(v) {
            errs.push(FieldError::duplicate(
                format!("{path}.volumes[{i}].name"),
                v,
            ));
        }
    }
    let mut names: Vec<String> = Vec::new();
    for list in ["initContainers", "containers"] {
        for (i, c) in arr(spec, &format!("/{list}")).iter().enumerate() {
            let at = format!("{path}.{list}[{i}]");
            match str_at(c, "/name") {
                None | Some("") => errs.push(FieldError::required(format!("{at}.name"))),
                Some(n) => {
                    if let Err(msg) = check_dns_label(n) {
                        errs.push(FieldError::invalid(format!("{at}.name"), n, msg));
                    } else if names.iter().any(|x| x == n) {
                        errs.push(FieldError::duplicate(format!("{at}.name"), n));
                    }
                    names.push(n.to_string());
                }
            }
            if str_at(c, "/image").is_none_or(|s| s.trim().is_empty()) {
                errs.push(FieldError::required(format!("{at}.image")));
            }
            if let Some(p) = str_at(c, "/imagePullPolicy") {
                if !["Always", "IfNotPresent", "Never"].contains(&p) {
                    errs.push(FieldError::not_supported(
                        format!("{at}.imagePullPolicy"),
                        p,
                        &["Always", "IfNotPresent", "Never"],
                    ));
                }
            }
            let mut port_names: Vec<&str> = Vec::new();
            for (j, p) in arr(c, "/ports").iter().enumerate() {
                let pat = format!("{at}.ports[{j}]");
                match get(p, "/containerPort") {
                    None => errs.push(FieldError::required(format!("{pat}.containerPort"))),
                    Some(v) => check_port(v, format!("{pat}.containerPort"), false, errs),
                }
                if let Some(v) = get(p, "/hostPort") {
                    check_port(v, format!("{pat}.hostPort"), true, errs);
                }
                if let Some(proto) = str_at(p, "/protocol") {
                    if !["TCP", "UDP", "SCTP"].contains(&proto) {
                        errs.push(FieldError::not_supported(
                            format!("{pat}.protocol"),
                            proto,
                            &["SCTP", "TCP", "UDP"],
                        ));
                    }
                }
                if let Some(n) = str_at(p, "/name") {
                    if port_names.contains(&n) {
                        errs.push(FieldError::duplicate(format!("{pat}.name"), n));
                    }
                    port_names.push(n);
                }
            }
            for (j, e) in arr(c, "/env").iter().enumerate() {
                if str_at(e, "/name").is_none_or(str::is_empty) {
                    errs.push(FieldError::required(format!("{at}.env[{j}].name")));
                }
            }
            for (j, m) in arr(c, "/volumeMounts").iter().enumerate() {
                let n = str_at(m, "/name").unwrap_or_default();
                if !volumes.contains(&n) {
                    errs.push(FieldError::invalid(
                        format!("{at}.volumeMounts[{j}].name"),
                        n,
                        "volume not found",
                    ));
                }
                if str_at(m, "/mountPath").is_none_or(str::is_empty) {
                    errs.push(FieldError::required(format!(
                        "{at}.volumeMounts[{j}].mountPath"
                    )));
                }
            }
        }
    }
    match str_at(spec, "/restartPolicy") {
        Some(rp) if !restart_policies.contains(&rp) => errs.push(FieldError::not_supported(
            format!("{path}.restartPolicy"),
            rp,
            restart_policies,
        )),
        None => {
            let mut e = FieldError::required(format!("{path}.restartPolicy"));
            e.detail = format!(
                "valid values: {}",
                restart_policies
                    .iter()
                    .map(|r| format!("{r:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            errs.push(e);
        }
        _ => {}
    }
    if let Some(g) = get(spec, "/terminationGracePeriodSeconds").and_then(Value::as_i64) {
        if g < 0 {
            errs.push(FieldError::invalid(
                format!("{path}.terminationGracePeriodSeconds"),
                g,
                "must be greater than or equal to 0",
            ));
        }
    }
}

/// A workload's selector must be present, non-empty and match its template's labels.
fn validate_selector(
    obj: &Value,
    selector_path: &str,
    labels_path: &str,
    errs: &mut Vec<FieldError>,
) {
    let field = selector_path.trim_start_matches('/').replace('/', ".");
    let Some(sel) = get(obj, selector_path) else {
        errs.push(FieldError::required(field));
        return;
    };
    match LabelSelector::from_object(sel) {
        Err(e) => errs.push(FieldError::invalid(field, sel, e.to_string())),
        Ok(s) if s.is_empty() => errs.push(FieldError::invalid(
            field,
            sel,
            "empty selector is invalid for deployment",
        )),
        Ok(s) => {
            let labels = super::selector::labels_of(
                &json!({"metadata": {"labels": get(obj, labels_path).cloned().unwrap_or(json!({}))}}),
            );
            if !s.matches(&labels) {
                errs.push(FieldError::invalid(
                    labels_path.trim_start_matches('/').replace('/', "."),
                    serde_json::to_string(&labels).unwrap_or_default(),
                    "`selector` does not match template `labels`",
                ));
            }
        }
    }
}

fn non_negative(obj: &Value, path: &str, errs: &mut Vec<FieldError>) {
    if let Some(n) = get(obj, path).and_then(Value::as_i64) {
        if n < 0 {
            errs.push(FieldError::invalid(
                path.trim_start_matches('/').replace('/', "."),
                n,
                "must be greater than or equal to 0",
            ));
        }
    }
}

fn valid_config_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Check a standard five-field cron schedule (or a `@` macro).
pub fn check_cron(s: &str) -> Result<(), String> {
    let s = s.trim();
    if let Some(m) = s.strip_prefix('@') {
        return if [
            "yearly", "annually", "monthly", "weekly", "daily", "midnight", "hourly",
        ]
        .contains(&m)
        {
            Ok(())
        } else {
            Err(format!("unrecognized descriptor: @{m}"))
        };
    }
    let s = s
        .strip_prefix("TZ=")
        .or_else(|| s.strip_prefix("CRON_TZ="))
        .map_or(s, |rest| rest.split_once(' ').map_or("", |x| x.1));
    let fields: Vec<&str> = s.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "expected exactly 5 fields, found {}: {s:?}",
            fields.len()
        ));
    }
    let ranges = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)];
    for (field, (lo, hi)) in fields.iter().zip(ranges) {
        for part in field.split(',') {
            let (range, step) = part
                .split_once('/')
                .map_or((part, None), |(r, s)| (r, Some(s)));
            if let Some(step) = step {
                if step.parse::<u32>().map_or(true, |n| n == 0) {
                    return Err(format!("invalid step {step:?} in {field:?}"));
                }
            }
            if range == "*" || range == "?" {
                continue;
            }
            let named = |x: &str| -> Option<u32> {
                const MONTHS: [&str; 12] = [
                    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov",
                    "dec",
                ];
                const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
                let l = x.to_ascii_lowercase();
                x.parse()
                    .ok()
                    .or_else(|| {
                        MONTHS
                            .iter()
                            .position(|m| *m == l)
                            .filter(|_| hi == 12)
                            .map(|i| i as u32 + 1)
                    })
                    .or_else(|| {
                        DAYS.iter()
                            .position(|d| *d == l)
                            .filter(|_| hi == 7)
                            .map(|i| i as u32)
                    })
            };
            let (a, b) = range.split_once('-').map_or((range, range), |x| x);
            match (named(a), named(b)) {
                (Some(a), Some(b)) if a >= lo && b <= hi && a <= b => {}
                _ => return Err(format!("invalid value {part:?}: must be within {lo}-{hi}")),
            }
        }
    }
    Ok(())
}

/// Roles and bindings, as kube-apiserver's RBAC validation checks them.
fn validate_rbac(res: &Resource, obj: &Value, errs: &mut Vec<FieldError>) {
    const RBAC: &str = "rbac.authorization.k8s.io";
    if matches!(res.kind, "Role" | "ClusterRole") {
        for (i, r) in arr(obj, "/rules").iter().enumerate() {
            let at = format!("rules[{i}]");
            if arr(r, "/verbs").is_empty() {
                errs.push(FieldError::required(format!("{at}.verbs")));
            }
            let urls = !arr(r, "/nonResourceURLs").is_empty();
            let resources = !arr(r, "/resources").is_empty();
            if urls && resources {
                errs.push(FieldError::invalid(
                    format!("{at}.nonResourceURLs"),
                    "",
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            if urls && res.namespaced {
                errs.push(FieldError::invalid(
                    format!("{at}.nonResourceURLs"),
                    "",
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            }
            if !urls && (!resources || get(r, "/apiGroups").is_none()) {
                errs.push(FieldError::required(format!(
                    "{at}.{}",
                    if resources { "apiGroups" } else { "resources" }
                )));
            }
        }
        return;
    }
    let kind = str_at(obj, "/roleRef/kind").unwrap_or_default();
    let allowed: &[&str] = if res.namespaced {
        &["Role", "ClusterRole"]
    } else {
        &["ClusterRole"]
    };
    if !allowed.contains(&kind) {
        errs.push(FieldError::not_supported("roleRef.kind", kind, allowed));
    }
    if str_at(obj, "/roleRef/apiGroup") != Some(RBAC) {
        errs.push(FieldError::not_supported(
            "roleRef.apiGroup",
            str_at(obj, "/roleRef/apiGroup").unwrap_or_default(),
            &[RBAC],
        ));
    }
    if str_at(obj, "/roleRef/name").is_none_or(str::is_empty) {
        errs.push(FieldError::required("roleRef.name"));
    }
    for (i, sub) in arr(obj, "/subjects").iter().enumerate() {
        let at = format!("subjects[{i}]");
        let kind = str_at(sub, "/kind").unwrap_or_default();
        match kind {
            "ServiceAccount" => {
                if !res.namespaced && str_at(sub, "/namespace").is_none_or(str::is_empty) {
                    errs.push(FieldError::required(format!("{at}.namespace")));
                }
            }
            "User" | "Group" => {
                if str_at(sub, "/apiGroup") != Some(RBAC) {
                    errs.push(FieldError::not_supported(
                        format!("{at}.apiGroup"),
                        str_at(sub, "/apiGroup").unwrap_or_default(),
                        &[RBAC],
                    ));
                }
            }
            other => errs.push(FieldError::not_supported(
                format!("{at}.kind"),
                other,
                &["ServiceAccount", "User", "Group"],
            )),
        }
        if str_at(sub, "/name").is_none_or(str::is_empty) {
            errs.push(FieldError::required(format!("{at}.name")));
        }
    }
}

fn validate_kind(res: &Resource, obj: &Value, errs: &mut Vec<FieldError>) {
    match res.kind {
        "CustomResourceDefinition" => super::crd::validate_crd(obj, errs),
        "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding" => {
            validate_rbac(res, obj, errs)
        }
        "Pod" => validate_pod_spec(
            get(obj, "/spec"),
            "spec",
            &["Always", "OnFailure", "Never"],
            errs,
        ),
        "Service" => {
            let headless = str_at(obj, "/spec/clusterIP") == Some("None");
            let ty = str_at(obj, "/spec/type").unwrap_or("ClusterIP");
            const TYPES: [&str; 4] = ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
            if !TYPES.contains(&ty) {
                errs.push(FieldError::not_supported("spec.type", ty, &TYPES));
            }
            let ports = arr(obj, "/spec/ports");
            if ports.is_empty() && !headless && ty != "ExternalName" {
                errs.push(FieldError::required("spec.ports"));
            }
            let mut names: Vec<&str> = Vec::new();
            for (i, p) in ports.iter().enumerate() {
                let at = format!("spec.ports[{i}]");
                match get(p, "/port") {
                    None => errs.push(FieldError::required(format!("{at}.port"))),
                    Some(v) => check_port(v, format!("{at}.port"), false, errs),
                }
                if let Some(tp) = get(p, "/targetPort").filter(|v| v.is_number()) {
                    check_port(tp, format!("{at}.targetPort"), false, errs);
                }
                let name = str_at(p, "/name").unwrap_or_default();
                if ports.len() > 1 && name.is_empty() {
                    errs.push(FieldError::required(format!("{at}.name")));
                } else if !name.is_empty() && names.contains(&name) {
                    errs.push(FieldError::duplicate(format!("{at}.name"), name));
                }
                names.push(name);
                if let Some(np) = get(p, "/nodePort").and_then(Value::as_i64) {
                    if np != 0 && !(30000..=32767).contains(&np) {
                        errs.push(FieldError::invalid(format!("{at}.nodePort"), np, "provided port is not in the valid range. The range of valid ports is 30000-32767"));
                    }
                }
            }
            if let Some(sa) = str_at(obj, "/spec/sessionAffinity") {
                if !["None", "ClientIP"].contains(&sa) {
                    errs.push(FieldError::not_supported(
                        "spec.sessionAffinity",
                        sa,
                        &["ClientIP", "None"],
                    ));
                }
            }
        }
        "ConfigMap" | "Secret" => {
            for section in ["data", "binaryData"] {
                if let Some(m) = get(obj, &format!("/{section}")).and_then(Value::as_object) {
                    for k in m.keys() {
                        if !valid_config_key(k) {
                            errs.push(FieldError::invalid(format!("{section}[{k}]"), k, "a valid config key must consist of alphanumeric characters, '-', '_' or '.'"));
                        }
                    }
                }
            }
            if res.kind == "Secret" && str_at(obj, "/type") == Some("kubernetes.io/tls") {
                for k in ["tls.crt", "tls.key"] {
                    if get(obj, &format!("/data/{k}")).is_none() {
                        errs.push(FieldError::required(format!("data[{k}]")));
                    }
                }
            }
        }
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" => {
            validate_selector(
                obj,
                "/spec/selector",
                "/spec/template/metadata/labels",
                errs,
            );
            // a StatefulSet's claim templates are volumes its containers may mount
            let mut spec = get(obj, "/spec/template/spec").cloned();
            if let (true, Some(Value::Object(spec))) = (res.kind == "StatefulSet", spec.as_mut()) {
                let mut volumes = spec
                    .get("volumes")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for t in arr(obj, "/spec/volumeClaimTemplates") {
                    if let Some(name) = str_at(t, "/metadata/name") {
                        volumes.push(
                            json!({"name": name, "persistentVolumeClaim": {"claimName": name}}),
                        );
                    }
                }
                spec.insert("volumes".into(), json!(volumes));
            }
            validate_pod_spec(spec.as_ref(), "spec.template.spec", &["Always"], errs);
            non_negative(obj, "/spec/replicas", errs);
            non_negative(obj, "/spec/minReadySeconds", errs);
            non_negative(obj, "/spec/revisionHistoryLimit", errs);
            if res.kind == "Deployment" {
                if let Some(t) = str_at(obj, "/spec/strategy/type") {
                    if !["Recreate", "RollingUpdate"].contains(&t) {
                        errs.push(FieldError::not_supported(
                            "spec.strategy.type",
                            t,
                            &["Recreate", "RollingUpdate"],
                        ));
                    }
                    if t == "Recreate" && get(obj, "/spec/strategy/rollingUpdate").is_some() {
                        errs.push(FieldError::forbidden(
                            "spec.strategy.rollingUpdate",
                            "may not be specified when strategy `type` is 'Recreate'",
                        ));
                    }
                }
                let zero =
                    |p: &str| matches!(get(obj, p), Some(v) if v == &json!(0) || v == &json!("0%"));
                if zero("/spec/strategy/rollingUpdate/maxSurge")
                    && zero("/spec/strategy/rollingUpdate/maxUnavailable")
                {
                    errs.push(FieldError::invalid(
                        "spec.strategy.rollingUpdate.maxUnavailable",
                        0,
                        "may not be 0 when `maxSurge` is 0",
                    ));
                }
            }
            if res.kind == "StatefulSet" {
                if let Some(p) = str_at(obj, "/spec/podManagementPolicy") {
                    if !["OrderedReady", "Parallel"].contains(&p) {
                        errs.push(FieldError::not_supported(
                            "spec.podManagementPolicy",
                            p,
                            &["OrderedReady", "Parallel"],
                        ));
                    }
                }
            }
        }
        "Job" => validate_job_spec(obj, "/spec", errs),
        "CronJob" => {
            match str_at(obj, "/spec/schedule") {
                None | Some("") => errs.push(FieldError::required("spec.schedule")),
                Some(s) => {
                    if let Err(msg) = check_cron(s) {
                        errs.push(FieldError::invalid("spec.schedule", s, msg));
                    }
                }
            }
            if let Some(p) = str_at(obj, "/spec/concurrencyPolicy") {
                if !["Allow", "Forbid", "Replace"].contains(&p) {
                    errs.push(FieldError::not_supported(
                        "spec.concurrencyPolicy",
                        p,
                        &["Allow", "Forbid", "Replace"],
                    ));
                }
            }
            validate_job_spec(obj, "/spec/jobTemplate/spec", errs);
        }
        "PersistentVolumeClaim" => {
            if arr(obj, "/spec/accessModes").is_empty() {
                errs.push(FieldError::required("spec.accessModes"));
            }
            if get(obj, "/spec/resources/requests/storage").is_none() {
                errs.push(FieldError::required("spec.resources[storage]"));
            }
        }
        "PersistentVolume" => {
            if arr(obj, "/spec/accessModes").is_empty() {
                errs.push(FieldError::required("spec.accessModes"));
            }
            if get(obj, "/spec/capacity/storage").is_none() {
                errs.push(FieldError::required("spec.capacity"));
            }
            const SOURCES: [&str; 5] = ["hostPath", "local", "nfs", "csi", "iscsi"];
            if !SOURCES
                .iter()
                .any(|s| get(obj, &format!("/spec/{s}")).is_some())
            {
                errs.push(
                    FieldError::required("spec")
                        .tap(|e| e.detail = "must specify a volume type".into()),
                );
            }
        }
        "Ingress" => {
            let rules = arr(obj, "/spec/rules");
            if rules.is_empty() && get(obj, "/spec/defaultBackend").is_none() {
                errs.push(FieldError::invalid(
                    "spec",
                    "",
                    "either `defaultBackend` or `rules` must be specified",
                ));
            }
            if let Some(b) = get(obj, "/spec/defaultBackend") {
                validate_backend(b, "spec.defaultBackend", errs);
            }
            for (i, r) in rules.iter().enumerate() {
                for (j, p) in arr(r, "/http/paths").iter().enumerate() {
                    let at = format!("spec.rules[{i}].http.paths[{j}]");
                    const TYPES: [&str; 3] = ["Exact", "ImplementationSpecific", "Prefix"];
                    match str_at(p, "/pathType") {
                        None => errs.push(FieldError::required(format!("{at}.pathType"))),
                        Some(t) if !TYPES.contains(&t) => errs.push(FieldError::not_supported(
                            format!("{at}.pathType"),
                            t,
                            &TYPES,
                        )),
                        Some(t) => {
                            let path = str_at(p, "/path").unwrap_or_default();
                            if t != "ImplementationSpecific" && !path.starts_with('/') {
                                errs.push(FieldError::invalid(
                                    format!("{at}.path"),
                                    path,
                                    "must be an absolute path",
                                ));
                            }
                        }
                    }
                    match get(p, "/backend") {
                        None => errs.push(FieldError::required(format!("{at}.backend"))),
                        Some(b) => validate_backend(b, &format!("{at}.backend"), errs),
                    }
                }
            }
        }
        "HorizontalPodAutoscaler" => {
            for f in ["kind", "name"] {
                if str_at(obj, &format!("/spec/scaleTargetRef/{f}")).is_none_or(str::is_empty) {
                    errs.push(FieldError::required(format!("spec.scaleTargetRef.{f}")));
                }
            }
            match get(obj, "/spec/maxReplicas").and_then(Value::as_i64) {
                None => errs.push(FieldError::required("spec.maxReplicas")),
                Some(max) if max < 1 => errs.push(FieldError::invalid(
                    "spec.maxReplicas",
                    max,
                    "must be greater than or equal to 1",
                )),
                Some(max) => {
                    if let Some(min) = get(obj, "/spec/minReplicas").and_then(Value::as_i64) {
                        if min > max {
                            errs.push(FieldError::invalid(
                                "spec.maxReplicas",
                                max,
                                "must be greater than or equal to `minReplicas`",
                            ));
                        }
                        if min < 0 {
                            errs.push(FieldError::invalid(
                                "spec.minReplicas",
                                min,
                                "must be greater than or equal to 0",
                            ));
                        }
                    }
                }
            }
        }
        "PodDisruptionBudget" => {
            let min = get(obj, "/spec/minAvailable");
            let max = get(obj, "/spec/maxUnavailable");
            if min.is_some() && max.is_some() {
                errs.push(FieldError::invalid(
                    "spec",
                    "",
                    "minAvailable and maxUnavailable cannot be both set",
                ));
            }
            for (f, v) in [("minAvailable", min), ("maxUnavailable", max)] {
                let field = format!("spec.{f}");
                match v {
                    None => {}
                    Some(Value::Number(n)) if n.as_i64().is_some_and(|n| n >= 0) => {}
                    Some(Value::String(p)) => {
                        let pct = p.strip_suffix('%').and_then(|x| x.parse::<u32>().ok());
                        match pct {
                            Some(x) if x <= 100 => {}
                            Some(_) => errs.push(FieldError::invalid(
                                field,
                                p.as_str(),
                                "must not be greater than 100%",
                            )),
                            None => errs.push(FieldError::invalid(
                                field,
                                p.as_str(),
                                "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')",
                            )),
                        }
                    }
                    Some(other) => errs.push(FieldError::invalid(
                        field,
                        other.clone(),
                        "must be greater than or equal to 0",
                    )),
                }
            }
        }
        "ControllerRevision"
            if get(obj, "/revision")
                .and_then(Value::as_i64)
                .is_some_and(|r| r < 0) =>
        {
            errs.push(FieldError::invalid(
                "revision",
                obj["revision"].clone(),
                "must be greater than or equal to 0",
            ));
        }
        _ => {}
    }
}

trait Tap: Sized {
    fn tap(self, f: impl FnOnce(&mut Self)) -> Self;
}

impl Tap for FieldError {
    fn tap(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
}

fn validate_backend(b: &Value, at: &str, errs: &mut Vec<FieldError>) {
    match (get(b, "/service"), get(b, "/resource")) {
        (None, None) => errs.push(FieldError::invalid(
            at,
            "",
            "one backend (`service` or `resource`) must be specified",
        )),
        (Some(s), _) => {
            if str_at(s, "/name").is_none_or(str::is_empty) {
                errs.push(FieldError::required(format!("{at}.service.name")));
            }
            if get(s, "/port/number").is_none() && str_at(s, "/port/name").is_none() {
                errs.push(FieldError::required(format!("{at}.service.port")));
            }
        }
        _ => {}
    }
}

fn validate_job_spec(obj: &Value, at: &str, errs: &mut Vec<FieldError>) {
    let field = at.trim_start_matches('/').replace('/', ".");
    validate_pod_spec(
        get(obj, &format!("{at}/template/spec")),
        &format!("{field}.template.spec"),
        &["OnFailure", "Never"],
        errs,
    );
    for f in [
        "parallelism",
        "completions",
        "backoffLimit",
        "activeDeadlineSeconds",
        "ttlSecondsAfterFinished",
    ] {
        non_negative(obj, &format!("{at}/{f}"), errs);
    }
    if at == "/spec" && get(obj, "/spec/selector").is_some() {
        validate_selector(
            obj,
            "/spec/selector",
            "/spec/template/metadata/labels",
            errs,
        );
    }
}

fn validate_update(res: &Resource, new: &Value, old: &Value, errs: &mut Vec<FieldError>) {
    let immutable = |path: &str, errs: &mut Vec<FieldError>| {
        if get(new, path) != get(old, path) {
            errs.push(FieldError::invalid(
                path.trim_start_matches('/').replace('/', "."),
                get(new, path).cloned().unwrap_or(Value::Null),
                "field is immutable",
            ));
        }
    };
    match res.kind {
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Job" => {
            immutable("/spec/selector", errs)
        }
        "RoleBinding" | "ClusterRoleBinding" if get(new, "/roleRef") != get(old, "/roleRef") => {
            errs.push(FieldError::invalid(
                "roleRef",
                get(new, "/roleRef").cloned().unwrap_or(Value::Null),
                "cannot change roleRef",
            ));
        }
        "Pod" => {
            // Only images, activeDeadlineSeconds and tolerations may change (nodeName through binding).
            let strip = |v: &Value| {
                let mut s = get(v, "/spec").cloned().unwrap_or(Value::Null);
                for list in ["containers", "initContainers"] {
                    if let Some(cs) = s.get_mut(list).and_then(Value::as_array_mut) {
                        for c in cs {
                            if let Some(o) = c.as_object_mut() {
                                o.remove("image");
                                o.remove("imagePullPolicy");
                            }
                        }
                    }
                }
                if let Some(o) = s.as_object_mut() {
                    o.remove("activeDeadlineSeconds");
                    o.remove("tolerations");
                }
                s
            };
            if strip(new) != strip(old) {
                errs.push(FieldError::forbidden(
                    "spec",
                    "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations)",
                ));
            }
        }
        "PersistentVolumeClaim" => {
            for f in [
                "accessModes",
                "volumeName",
                "storageClassName",
                "volumeMode",
                "selector",
            ] {
                if get(old, &format!("/spec/{f}")).is_some() {
                    immutable(&format!("/spec/{f}"), errs);
                }
            }
        }
        "Secret" | "ConfigMap" if old.get("immutable") == Some(&json!(true)) => {
            for f in ["/data", "/binaryData", "/immutable"] {
                if get(new, f) != get(old, f) {
                    errs.push(FieldError::forbidden(
                        f.trim_start_matches('/'),
                        "field is immutable when `immutable` is set",
                    ));
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_generated_job_selector_matches_its_template_labels() {
        let mut job =
            json!({"metadata": {"name": "j", "uid": "u-1"}, "spec": {"template": {"spec": {}}}});
        generate_job_selector(&mut job);
        assert_eq!(
            job["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
            "u-1"
        );
        let labels = &job["spec"]["template"]["metadata"]["labels"];
        assert_eq!(labels["batch.kubernetes.io/controller-uid"], "u-1");
        assert_eq!(labels["batch.kubernetes.io/job-name"], "j");
        assert!(
            labels.as_object().unwrap().keys().all(|k| !k.contains('~')),
            "{labels}"
        );
    }

    use super::*;
    use crate::api::resources::lookup;

    fn err_fields(r: Result<Value, ApiError>) -> Vec<String> {
        match r {
            Err(ApiError::Invalid { errors, .. }) => errors.iter().map(|e| e.to_string()).collect(),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn pod_defaults_match_kubernetes() {
        let pod = prepare(
            lookup("pod").unwrap(),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "default"},
                   "spec": {"containers": [{"name": "c", "image": "reg/app:1.0", "ports": [{"containerPort": 80}]},
                                           {"name": "d", "image": "reg/app"}]}}),
            None,
        )
        .unwrap();
        assert_eq!(pod["spec"]["restartPolicy"], "Always");
        assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 30);
        assert_eq!(
            pod["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
        assert_eq!(pod["spec"]["containers"][1]["imagePullPolicy"], "Always");
        assert_eq!(pod["spec"]["containers"][0]["ports"][0]["protocol"], "TCP");
    }

    #[test]
    fn pod_errors_name_each_field() {
        let res = lookup("pod").unwrap();
        let errs = err_fields(prepare(
            res,
            json!({"metadata": {"name": "Bad_Name", "namespace": "default"},
                   "spec": {"restartPolicy": "Sometimes", "containers": [
                       {"name": "c"},
                       {"name": "c", "image": "x", "ports": [{"containerPort": 70000}]}]}}),
            None,
        ));
        assert!(
            errs.iter()
                .any(|e| e.starts_with("metadata.name: Invalid value: \"Bad_Name\"")),
            "{errs:?}"
        );
        assert!(
            errs.contains(&"spec.containers[0].image: Required value".to_string()),
            "{errs:?}"
        );
        assert!(
            errs.contains(&"spec.containers[1].name: Duplicate value: \"c\"".to_string()),
            "{errs:?}"
        );
        assert!(
            errs.iter().any(|e| e.starts_with(
                "spec.containers[1].ports[0].containerPort: Invalid value: \"70000\""
            )),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("spec.restartPolicy: Unsupported value: \"Sometimes\"")),
            "{errs:?}"
        );
        let errs = err_fields(prepare(
            res,
            json!({"metadata": {"name": "a", "namespace": "d"}, "spec": {"containers": []}}),
            None,
        ));
        assert_eq!(errs, vec!["spec.containers: Required value"]);
    }

    #[test]
    fn wrong_field_types_are_bad_requests() {
        let r = prepare(
            lookup("pod").unwrap(),
            json!({"metadata": {"name": "a"}, "spec": {"containers": "nope"}}),
            None,
        );
        assert!(
            matches!(r, Err(ApiError::BadRequest(m)) if m.starts_with("Pod in version \"v1\" cannot be handled as a Pod"))
        );
    }

    #[test]
    fn deployment_selector_must_match_template_and_defaults_apply() {
        let res = lookup("deploy").unwrap();
        let d = |labels: Value| {
            json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}}}})
        };
        let ok = prepare(res, d(json!({"app": "web"})), None).unwrap();
        assert_eq!(ok["spec"]["replicas"], 1);
        assert_eq!(ok["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(ok["spec"]["revisionHistoryLimit"], 10);
        assert_eq!(ok["spec"]["template"]["spec"]["restartPolicy"], "Always");
        let errs = err_fields(prepare(res, d(json!({"app": "other"})), None));
        assert!(
            errs[0].starts_with("spec.template.metadata.labels: Invalid value"),
            "{errs:?}"
        );
        assert!(errs[0].ends_with("`selector` does not match template `labels`"));
        let mut changed = ok.clone();
        changed["spec"]["selector"]["matchLabels"]["app"] = json!("web2");
        changed["spec"]["template"]["metadata"]["labels"]["app"] = json!("web2");
        let errs = err_fields(prepare(res, changed, Some(&ok)));
        assert!(
            errs[0].starts_with("spec.selector: Invalid value")
                && errs[0].ends_with("field is immutable")
        );
    }

    #[test]
    fn job_requires_a_terminating_restart_policy() {
        let res = lookup("job").unwrap();
        let errs = err_fields(prepare(
            res,
            json!({"metadata": {"name": "j", "namespace": "d"},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}}),
            None,
        ));
        assert_eq!(errs, vec!["spec.template.spec.restartPolicy: Required value: valid values: \"OnFailure\", \"Never\""]);
    }

    #[test]
    fn cron_schedules_are_checked() {
        for ok in [
            "*/5 * * * *",
            "0 3 * * 1-5",
            "@hourly",
            "15 2 1,15 jan-jun mon",
            "CRON_TZ=UTC 0 0 * * *",
        ] {
            assert!(check_cron(ok).is_ok(), "{ok}");
        }
        for bad in [
            "* * * *",
            "61 * * * *",
            "*/0 * * * *",
            "@sometimes",
            "a b c d e",
        ] {
            assert!(check_cron(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secret_string_data_is_merged_into_data() {
        let s = prepare(lookup("secret").unwrap(), json!({"metadata": {"name": "s", "namespace": "d"}, "stringData": {"password": "hunter2"}}), None).unwrap();
        assert_eq!(s["data"]["password"], "aHVudGVyMg==");
        assert!(s.get("stringData").is_none());
        assert_eq!(s["type"], "Opaque");
    }

    #[test]
    fn service_ports_default_and_validate() {
        let res = lookup("svc").unwrap();
        let s = prepare(res, json!({"metadata": {"name": "web", "namespace": "d"}, "spec": {"ports": [{"port": 80}]}}), None).unwrap();
        assert_eq!(s["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(s["spec"]["type"], "ClusterIP");
        let errs = err_fields(prepare(
            res,
            json!({"metadata": {"name": "1web", "namespace": "d"}, "spec": {}}),
            None,
        ));
        assert!(errs
            .iter()
            .any(|e| e.starts_with("metadata.name: Invalid value: \"1web\"")));
        assert!(errs.contains(&"spec.ports: Required value".to_string()));
    }
}
