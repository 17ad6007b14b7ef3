//! A pod's quality-of-service class, as Kubernetes computes it: the API
//! server records it in `status.qosClass` when the pod is created, and the
//! agent uses it for the pod's cgroup (`/wasmkube/<class>/pod<uid>`).

use serde_json::Value;

use super::quantity;

/// Two quantities of resource `r` (`cpu` or `memory`) are the same amount.
fn same_quantity(r: &str, a: &str, b: &str) -> bool {
    let amount = |q: &str| match r {
        "cpu" => quantity::millicores(q).ok(),
        _ => quantity::bytes(q).ok(),
    };
    match (amount(a), amount(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// The pod's QoS class, as the kubelet computes it: Guaranteed when every
/// container has cpu and memory limits equal to its requests, BestEffort
/// when none sets any, Burstable otherwise.
pub fn qos_class(pod: &Value) -> &'static str {
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .flat_map(|k| pod["spec"][k].as_array().into_iter().flatten())
        .collect();
    let res = |c: &Value, kind: &str, r: &str| {
        c.pointer(&format!("/resources/{kind}/{r}"))
            .and_then(Value::as_str)
            .map(String::from)
    };
    let any = containers.iter().any(|c| {
        ["cpu", "memory"]
            .iter()
            .any(|r| res(c, "requests", r).is_some() || res(c, "limits", r).is_some())
    });
    if !any {
        return "BestEffort";
    }
    let guaranteed = containers.iter().all(|c| {
        ["cpu", "memory"].iter().all(|r| {
            let limit = res(c, "limits", r);
            match (res(c, "requests", r), limit) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(q), Some(l)) => same_quantity(r, &q, &l),
            }
        })
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(resources: Vec<Value>) -> Value {
        let containers: Vec<Value> = resources
            .into_iter()
            .enumerate()
            .map(|(i, r)| json!({"name": format!("c{i}"), "resources": r}))
            .collect();
        json!({"spec": {"containers": containers}})
    }

    #[test]
    fn classes_follow_requests_and_limits() {
        assert_eq!(qos_class(&pod(vec![json!({})])), "BestEffort");
        let both = json!({"limits": {"cpu": "1", "memory": "64Mi"}});
        assert_eq!(qos_class(&pod(vec![both.clone()])), "Guaranteed");
        // equal amounts written differently are equal
        let same = json!({"requests": {"cpu": "1000m", "memory": "65536Ki"},
                          "limits": {"cpu": "1", "memory": "64Mi"}});
        assert_eq!(qos_class(&pod(vec![same])), "Guaranteed");
        let less = json!({"requests": {"cpu": "500m", "memory": "64Mi"},
                          "limits": {"cpu": "1", "memory": "64Mi"}});
        assert_eq!(qos_class(&pod(vec![less])), "Burstable");
        let memory_only = json!({"limits": {"memory": "64Mi"}});
        assert_eq!(qos_class(&pod(vec![memory_only])), "Burstable");
        // one container without limits makes the pod Burstable
        assert_eq!(qos_class(&pod(vec![both, json!({})])), "Burstable");
    }
}
