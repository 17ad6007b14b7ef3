//! Pod Security Standards, checked as Kubernetes' PodSecurity admission
//! plugin checks them: a namespace's `pod-security.kubernetes.io/enforce`,
//! `warn` and `audit` labels name a level (`privileged`, `baseline`,
//! `restricted`); a pod that violates the enforced level is refused, one
//! that violates the warn level gets a warning, one that violates the audit
//! level an annotation on its audit event.
//!
//! [`violations`] is pure: the checks of a level over a pod spec, each
//! reported in the words kube-apiserver uses, so users see the messages
//! they know. Every level is evaluated at `latest`; a `-version` label is
//! accepted and read as `latest`.

use serde_json::Value;

/// A Pod Security Standards level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "privileged" => Some(Level::Privileged),
            "baseline" => Some(Level::Baseline),
            "restricted" => Some(Level::Restricted),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

/// The levels a namespace's labels set for one mode (`enforce`, `warn`,
/// `audit`). An unknown level is treated as `restricted`, as Kubernetes
/// does, so a typo never weakens a namespace.
pub fn namespace_level(namespace: &Value, mode: &str) -> Option<Level> {
    let v =
        namespace["metadata"]["labels"][format!("pod-security.kubernetes.io/{mode}")].as_str()?;
    Some(Level::parse(v).unwrap_or(Level::Restricted))
}

/// Capabilities the baseline level lets containers add (the runtime's defaults).
const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Sysctls the baseline level allows (namespaced and safe).
const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

/// Volume types the restricted level allows.
const RESTRICTED_VOLUMES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// `"a", "b"` or `"a"`: names as kube-apiserver lists them.
fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `container "a"` or `containers "a", "b"`.
fn containers_phrase(names: &[String]) -> String {
    if names.len() == 1 {
        format!("container {}", quoted(names))
    } else {
        format!("containers {}", quoted(names))
    }
}

/// Every container of a pod spec: init, regular and ephemeral.
fn all_containers(spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| spec[*k].as_array().into_iter().flatten())
        .collect()
}

fn name_of(c: &Value) -> String {
    c["name"].as_str().unwrap_or_default().to_string()
}

/// The checks of `level` that pod spec `spec` (with the pod's
/// `metadata`) fails, as `"check (detail)"` strings; empty when it passes.
pub fn violations(level: Level, metadata: &Value, spec: &Value) -> Vec<String> {
    let mut out = checks(level, metadata, spec);
    if level == Level::Restricted {
        // the restricted checks of these replace the baseline ones
        out.retain(|(id, _)| !matches!(*id, "capabilities_baseline" | "seccompProfile_baseline"));
    }
    // in the order of the checks' ids, as kube-apiserver reports them
    out.sort_by_key(|(id, _)| *id);
    out.into_iter().map(|(_, m)| m).collect()
}

/// `(check id, message)` for every check of `level` the pod fails.
fn checks(level: Level, metadata: &Value, spec: &Value) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if level == Level::Privileged {
        return out;
    }
    let containers = all_containers(spec);
    let psc = &spec["securityContext"];

    // --- baseline ---
    let host: Vec<&str> = ["hostNetwork", "hostPID", "hostIPC"]
        .into_iter()
        .filter(|k| spec[*k].as_bool() == Some(true))
        .collect();
    if !host.is_empty() {
        let set: Vec<String> = host.iter().map(|k| format!("{k}=true")).collect();
        out.push((
            "hostNamespaces",
            format!("host namespaces ({})", set.join(", ")),
        ));
    }
    let privileged: Vec<String> = containers
        .iter()
        .filter(|c| c["securityContext"]["privileged"].as_bool() == Some(true))
        .map(|c| name_of(c))
        .collect();
    if !privileged.is_empty() {
        out.push((
            "privileged",
            format!(
                "privileged ({} must not set securityContext.privileged=true)",
                containers_phrase(&privileged)
            ),
        ));
    }
    let mut added = Vec::new();
    let mut adders = Vec::new();
    for c in &containers {
        let mut mine = false;
        for cap in c["securityContext"]["capabilities"]["add"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !BASELINE_CAPABILITIES.contains(&cap) {
                if !added.contains(&cap.to_string()) {
                    added.push(cap.to_string());
                }
                mine = true;
            }
        }
        if mine {
            adders.push(name_of(c));
        }
    }
    if !adders.is_empty() {
        out.push((
            "capabilities_baseline",
            format!(
            "non-default capabilities ({} must not include {} in securityContext.capabilities.add)",
            containers_phrase(&adders),
            quoted(&added)
        ),
        ));
    }
    let host_paths: Vec<String> = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v.get("hostPath").is_some_and(|h| !h.is_null()))
        .map(name_of)
        .collect();
    if !host_paths.is_empty() {
        let noun = if host_paths.len() == 1 {
            "volume"
        } else {
            "volumes"
        };
        out.push((
            "hostPathVolumes",
            format!("hostPath volumes ({noun} {})", quoted(&host_paths)),
        ));
    }
    let mut host_ports = Vec::new();
    let mut port_users = Vec::new();
    for c in &containers {
        let mine: Vec<String> = c["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["hostPort"].as_u64())
            .filter(|p| *p != 0)
            .map(|p| p.to_string())
            .collect();
        if !mine.is_empty() {
            port_users.push(name_of(c));
            host_ports.extend(mine);
        }
    }
    if !port_users.is_empty() {
        out.push((
            "hostPorts",
            format!(
                "hostPort ({} uses {} {})",
                containers_phrase(&port_users),
                if host_ports.len() == 1 {
                    "hostPort"
                } else {
                    "hostPorts"
                },
                host_ports.join(", ")
            ),
        ));
    }
    let unmasked: Vec<String> = containers
        .iter()
        .filter(|c| c["securityContext"]["procMount"].as_str() == Some("Unmasked"))
        .map(|c| name_of(c))
        .collect();
    if !unmasked.is_empty() {
        out.push((
            "procMount",
            format!(
                "procMount ({} must not set securityContext.procMount to \"Unmasked\")",
                containers_phrase(&unmasked)
            ),
        ));
    }
    let unconfined = |sc: &Value| sc["seccompProfile"]["type"].as_str() == Some("Unconfined");
    let mut seccomp = Vec::new();
    if unconfined(psc) {
        seccomp.push(
            "pod must not set securityContext.seccompProfile.type to \"Unconfined\"".to_string(),
        );
    }
    let unconfined_containers: Vec<String> = containers
        .iter()
        .filter(|c| unconfined(&c["securityContext"]))
        .map(|c| name_of(c))
        .collect();
    if !unconfined_containers.is_empty() {
        seccomp.push(format!(
            "{} must not set securityContext.seccompProfile.type to \"Unconfined\"",
            containers_phrase(&unconfined_containers)
        ));
    }
    if !seccomp.is_empty() {
        out.push((
            "seccompProfile_baseline",
            format!("seccompProfile ({})", seccomp.join("; ")),
        ));
    }
    let bad_sysctls: Vec<String> = psc["sysctls"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str())
        .filter(|n| !SAFE_SYSCTLS.contains(n))
        .map(String::from)
        .collect();
    if !bad_sysctls.is_empty() {
        out.push((
            "sysctls",
            format!("forbidden sysctls ({})", bad_sysctls.join(", ")),
        ));
    }
    let apparmor: Vec<String> = metadata["annotations"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, v)| {
            k.starts_with("container.apparmor.security.beta.kubernetes.io/")
                && v.as_str() == Some("unconfined")
        })
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    if !apparmor.is_empty() {
        out.push((
            "appArmorProfile",
            format!("forbidden AppArmor profiles ({})", quoted(&apparmor)),
        ));
    }

    if level == Level::Baseline {
        return out;
    }

    // --- restricted ---
    let restricted_volumes: Vec<(String, String)> = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| {
            let kind = v
                .as_object()?
                .iter()
                .find(|(k, val)| k.as_str() != "name" && !val.is_null())?
                .0
                .clone();
            (!RESTRICTED_VOLUMES.contains(&kind.as_str()) && kind != "hostPath")
                .then(|| (name_of(v), kind))
        })
        .collect();
    if !restricted_volumes.is_empty() {
        let names: Vec<String> = restricted_volumes.iter().map(|(n, _)| n.clone()).collect();
        let mut kinds: Vec<String> = restricted_volumes.iter().map(|(_, k)| k.clone()).collect();
        kinds.dedup();
        let noun = if names.len() == 1 {
            "volume"
        } else {
            "volumes"
        };
        out.push((
            "restrictedVolumes",
            format!(
                "restricted volume types ({noun} {} {} {})",
                quoted(&names),
                if names.len() == 1 { "uses" } else { "use" },
                if kinds.len() == 1 {
                    format!("restricted volume type {}", quoted(&kinds))
                } else {
                    format!("restricted volume types {}", quoted(&kinds))
                }
            ),
        ));
    }
    let escalating: Vec<String> = containers
        .iter()
        .filter(|c| c["securityContext"]["allowPrivilegeEscalation"].as_bool() != Some(false))
        .map(|c| name_of(c))
        .collect();
    if !escalating.is_empty() {
        out.push(("allowPrivilegeEscalation", format!(
            "allowPrivilegeEscalation != false ({} must set securityContext.allowPrivilegeEscalation=false)",
            containers_phrase(&escalating)
        )));
    }
    let pod_non_root = psc["runAsNonRoot"].as_bool();
    let root_containers: Vec<String> = containers
        .iter()
        .filter(|c| c["securityContext"]["runAsNonRoot"].as_bool() == Some(false))
        .map(|c| name_of(c))
        .collect();
    let unset_containers: Vec<String> = containers
        .iter()
        .filter(|c| c["securityContext"]["runAsNonRoot"].as_bool().is_none())
        .map(|c| name_of(c))
        .collect();
    let mut non_root = Vec::new();
    if pod_non_root == Some(false) {
        non_root.push("pod must not set securityContext.runAsNonRoot=false".to_string());
    }
    if !root_containers.is_empty() {
        non_root.push(format!(
            "{} must not set securityContext.runAsNonRoot=false",
            containers_phrase(&root_containers)
        ));
    }
    if pod_non_root != Some(true) && !unset_containers.is_empty() {
        non_root.push(format!(
            "pod or {} must set securityContext.runAsNonRoot=true",
            containers_phrase(&unset_containers)
        ));
    }
    if !non_root.is_empty() {
        out.push((
            "runAsNonRoot",
            format!("runAsNonRoot != true ({})", non_root.join("; ")),
        ));
    }
    let mut as_root = Vec::new();
    if psc["runAsUser"].as_i64() == Some(0) {
        as_root.push("pod must not set runAsUser=0".to_string());
    }
    let root_users: Vec<String> = containers
        .iter()
        .filter(|c| c["securityContext"]["runAsUser"].as_i64() == Some(0))
        .map(|c| name_of(c))
        .collect();
    if !root_users.is_empty() {
        as_root.push(format!(
            "{} must not set runAsUser=0",
            containers_phrase(&root_users)
        ));
    }
    if !as_root.is_empty() {
        out.push(("runAsUser", format!("runAsUser=0 ({})", as_root.join("; "))));
    }
    let confined = |sc: &Value| {
        matches!(
            sc["seccompProfile"]["type"].as_str(),
            Some("RuntimeDefault" | "Localhost")
        )
    };
    if !confined(psc) {
        let unset: Vec<String> = containers
            .iter()
            .filter(|c| c["securityContext"]["seccompProfile"]["type"].is_null())
            .map(|c| name_of(c))
            .collect();
        if !unset.is_empty() {
            out.push(("seccompProfile_restricted", format!(
                "seccompProfile (pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")",
                containers_phrase(&unset)
            )));
        }
    }
    let mut no_drop = Vec::new();
    let mut extra_add = Vec::new();
    let mut extra_caps: Vec<String> = Vec::new();
    for c in &containers {
        let caps = &c["securityContext"]["capabilities"];
        let drops_all = caps["drop"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|d| d.as_str() == Some("ALL"));
        if !drops_all {
            no_drop.push(name_of(c));
        }
        let extra: Vec<String> = caps["add"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|a| *a != "NET_BIND_SERVICE")
            .map(String::from)
            .collect();
        if !extra.is_empty() {
            extra_add.push(name_of(c));
            for e in extra {
                if !extra_caps.contains(&e) {
                    extra_caps.push(e);
                }
            }
        }
    }
    let mut caps = Vec::new();
    if !no_drop.is_empty() {
        caps.push(format!(
            "{} must set securityContext.capabilities.drop=[\"ALL\"]",
            containers_phrase(&no_drop)
        ));
    }
    if !extra_add.is_empty() {
        caps.push(format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(&extra_add),
            quoted(&extra_caps)
        ));
    }
    if !caps.is_empty() {
        out.push((
            "capabilities_restricted",
            format!("unrestricted capabilities ({})", caps.join("; ")),
        ));
    }
    out
}

/// The message of a refusal or warning: `violates PodSecurity
/// "restricted:latest": a (…), b (…)`.
pub fn describe(level: Level, violations: &[String]) -> String {
    format!(
        "PodSecurity \"{}:latest\": {}",
        level.as_str(),
        violations.join(", ")
    )
}

/// Where a kind keeps its pod template, for the warn and audit modes on
/// workloads (enforcement applies to pods only, as in Kubernetes).
pub fn template_of(kind: &str, obj: &Value) -> Option<(Value, Value)> {
    let t = match kind {
        "Pod" => return Some((obj["metadata"].clone(), obj["spec"].clone())),
        "Deployment"
        | "ReplicaSet"
        | "StatefulSet"
        | "DaemonSet"
        | "Job"
        | "ReplicationController" => &obj["spec"]["template"],
        "CronJob" => &obj["spec"]["jobTemplate"]["spec"]["template"],
        _ => return None,
    };
    t.get("spec").map(|s| (t["metadata"].clone(), s.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(level: Level, spec: Value) -> Vec<String> {
        violations(level, &json!({}), &spec)
    }

    #[test]
    fn privileged_allows_everything() {
        let spec = json!({"hostNetwork": true, "containers": [{"name": "a",
            "securityContext": {"privileged": true}}]});
        assert!(check(Level::Privileged, spec).is_empty());
    }

    #[test]
    fn baseline_refuses_host_access_and_privilege_in_kubernetes_words() {
        let spec = json!({
            "hostNetwork": true, "hostPID": true,
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}, {"name": "tmp", "emptyDir": {}}],
            "containers": [
                {"name": "a", "securityContext": {"privileged": true,
                    "capabilities": {"add": ["NET_ADMIN", "CHOWN", "SYS_ADMIN"]}},
                 "ports": [{"containerPort": 80, "hostPort": 8080}]},
                {"name": "b", "securityContext": {"seccompProfile": {"type": "Unconfined"}}}]});
        let v = check(Level::Baseline, spec);
        assert_eq!(
            v,
            // in the order of the checks' ids, as kube-apiserver lists them
            vec![
                "non-default capabilities (container \"a\" must not include \"NET_ADMIN\", \"SYS_ADMIN\" in securityContext.capabilities.add)",
                "host namespaces (hostNetwork=true, hostPID=true)",
                "hostPath volumes (volume \"root\")",
                "hostPort (container \"a\" uses hostPort 8080)",
                "privileged (container \"a\" must not set securityContext.privileged=true)",
                "seccompProfile (container \"b\" must not set securityContext.seccompProfile.type to \"Unconfined\")",
            ]
        );
        // a plain pod passes baseline
        let plain = json!({"containers": [{"name": "a", "image": "x"}]});
        assert!(check(Level::Baseline, plain).is_empty());
    }

    #[test]
    fn restricted_wants_non_root_no_escalation_seccomp_and_dropped_capabilities() {
        let plain = json!({"containers": [{"name": "a"}], "initContainers": [{"name": "i"}]});
        assert_eq!(
            check(Level::Restricted, plain),
            vec![
                "allowPrivilegeEscalation != false (containers \"i\", \"a\" must set securityContext.allowPrivilegeEscalation=false)",
                "unrestricted capabilities (containers \"i\", \"a\" must set securityContext.capabilities.drop=[\"ALL\"])",
                "runAsNonRoot != true (pod or containers \"i\", \"a\" must set securityContext.runAsNonRoot=true)",
                "seccompProfile (pod or containers \"i\", \"a\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")",
            ]
        );
        let good = json!({
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "volumes": [{"name": "cfg", "configMap": {"name": "c"}}],
            "containers": [{"name": "a", "securityContext": {"allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}]});
        assert!(check(Level::Restricted, good.clone()).is_empty());
        let mut root = good.clone();
        root["containers"][0]["securityContext"]["runAsUser"] = json!(0);
        root["volumes"] = json!([{"name": "n", "nfs": {"server": "x", "path": "/"}}]);
        assert_eq!(
            check(Level::Restricted, root),
            vec![
                "restricted volume types (volume \"n\" uses restricted volume type \"nfs\")",
                "runAsUser=0 (container \"a\" must not set runAsUser=0)",
            ]
        );
        // restricted includes baseline
        let mut privileged = good;
        privileged["containers"][0]["securityContext"]["privileged"] = json!(true);
        assert_eq!(check(Level::Restricted, privileged).len(), 1);
    }

    #[test]
    fn namespace_labels_pick_levels_and_typos_are_restricted() {
        let ns = json!({"metadata": {"labels": {
            "pod-security.kubernetes.io/enforce": "baseline",
            "pod-security.kubernetes.io/warn": "restrictd"}}});
        assert_eq!(namespace_level(&ns, "enforce"), Some(Level::Baseline));
        assert_eq!(namespace_level(&ns, "warn"), Some(Level::Restricted));
        assert_eq!(namespace_level(&ns, "audit"), None);
    }

    #[test]
    fn workloads_show_their_pod_template() {
        let d = json!({"spec": {"template": {"metadata": {"labels": {"a": "b"}},
            "spec": {"containers": [{"name": "a"}]}}}});
        assert!(template_of("Deployment", &d).is_some());
        let cj =
            json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": []}}}}}});
        assert!(template_of("CronJob", &cj).is_some());
        assert!(template_of("ConfigMap", &d).is_none());
    }
}
