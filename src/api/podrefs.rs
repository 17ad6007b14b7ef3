//! What a pod refers to by name: Secrets, ConfigMaps, claims and its
//! ServiceAccount. The agent fetches exactly these; the Node authorizer
//! lets an agent read exactly these for the pods bound to it.

use std::collections::BTreeSet;

use serde_json::Value;

/// The objects a pod spec names, in the pod's namespace.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PodRefs {
    pub secrets: BTreeSet<String>,
    pub configmaps: BTreeSet<String>,
    pub claims: BTreeSet<String>,
    pub service_account: String,
}

fn containers(spec: &Value) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .into_iter()
        .flat_map(move |k| spec[k].as_array().into_iter().flatten())
}

fn add(set: &mut BTreeSet<String>, v: &Value) {
    if let Some(n) = v.as_str().filter(|n| !n.is_empty()) {
        set.insert(n.to_string());
    }
}

/// Everything `pod` names (`pod` is a whole Pod object).
pub fn pod_refs(pod: &Value) -> PodRefs {
    let spec = &pod["spec"];
    let mut r = PodRefs {
        service_account: spec["serviceAccountName"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
            .to_string(),
        ..Default::default()
    };
    for s in spec["imagePullSecrets"].as_array().into_iter().flatten() {
        add(&mut r.secrets, &s["name"]);
    }
    for c in containers(spec) {
        for e in c["env"].as_array().into_iter().flatten() {
            add(&mut r.secrets, &e["valueFrom"]["secretKeyRef"]["name"]);
            add(
                &mut r.configmaps,
                &e["valueFrom"]["configMapKeyRef"]["name"],
            );
        }
        for e in c["envFrom"].as_array().into_iter().flatten() {
            add(&mut r.secrets, &e["secretRef"]["name"]);
            add(&mut r.configmaps, &e["configMapRef"]["name"]);
        }
    }
    for v in spec["volumes"].as_array().into_iter().flatten() {
        add(&mut r.secrets, &v["secret"]["secretName"]);
        add(&mut r.configmaps, &v["configMap"]["name"]);
        add(&mut r.claims, &v["persistentVolumeClaim"]["claimName"]);
        for s in v["projected"]["sources"].as_array().into_iter().flatten() {
            add(&mut r.secrets, &s["secret"]["name"]);
            add(&mut r.configmaps, &s["configMap"]["name"]);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_kind_of_reference_is_found() {
        let pod = json!({"spec": {
            "serviceAccountName": "builder",
            "imagePullSecrets": [{"name": "pull"}],
            "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "init-env"}}]}],
            "containers": [{"name": "a", "env": [
                {"name": "X", "valueFrom": {"secretKeyRef": {"name": "db", "key": "p"}}},
                {"name": "Y", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "k"}}},
                {"name": "Z", "value": "secret"}]}],
            "volumes": [
                {"name": "s", "secret": {"secretName": "tls"}},
                {"name": "c", "configMap": {"name": "files"}},
                {"name": "d", "persistentVolumeClaim": {"claimName": "data"}},
                {"name": "p", "projected": {"sources": [
                    {"serviceAccountToken": {"path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt"}},
                    {"secret": {"name": "extra"}}]}}]}});
        let r = pod_refs(&pod);
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(r.secrets, set(&["db", "extra", "init-env", "pull", "tls"]));
        assert_eq!(
            r.configmaps,
            set(&["files", "kube-root-ca.crt", "settings"])
        );
        assert_eq!(r.claims, set(&["data"]));
        assert_eq!(r.service_account, "builder");
        assert_eq!(pod_refs(&json!({"spec": {}})).service_account, "default");
    }
}
