//! A pod's status as Kubernetes reports it, computed from what the agent
//! knows of its containers. Pure: unit-tested without a runtime.

use serde_json::{json, Value};

/// A container's state, as in `containerStatuses[].state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CState {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: String,
    },
    Terminated {
        exit_code: i32,
        reason: String,
        message: Option<String>,
        started_at: String,
        finished_at: String,
    },
}

impl CState {
    pub fn waiting(reason: &str) -> Self {
        CState::Waiting {
            reason: reason.into(),
            message: None,
        }
    }

    fn to_json(&self) -> Value {
        match self {
            CState::Waiting { reason, message } => {
                let mut w = json!({"reason": reason});
                if let Some(m) = message {
                    w["message"] = json!(m);
                }
                json!({"waiting": w})
            }
            CState::Running { started_at } => json!({"running": {"startedAt": started_at}}),
            CState::Terminated {
                exit_code,
                reason,
                message,
                started_at,
                finished_at,
            } => {
                let mut t = json!({"exitCode": exit_code, "reason": reason, "startedAt": started_at, "finishedAt": finished_at});
                if let Some(m) = message {
                    t["message"] = json!(m);
                }
                json!({"terminated": t})
            }
        }
    }
}

/// What the agent tracks per container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRecord {
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub container_id: String,
    pub state: CState,
    pub last_state: Option<CState>,
    pub restart_count: u32,
    /// The startup probe succeeded (or there is none) in the current run.
    pub started: bool,
    /// The readiness probe passes (or there is none) in the current run.
    pub ready: bool,
}

impl ContainerRecord {
    pub fn new(name: &str, image: &str) -> Self {
        Self {
            name: name.into(),
            image: image.into(),
            image_id: String::new(),
            container_id: String::new(),
            state: CState::waiting("ContainerCreating"),
            last_state: None,
            restart_count: 0,
            started: false,
            ready: false,
        }
    }

    /// Ready: running, started and passing its readiness probe.
    pub fn is_ready(&self) -> bool {
        self.running() && self.started && self.ready
    }

    fn running(&self) -> bool {
        matches!(self.state, CState::Running { .. })
    }

    fn to_json(&self) -> Value {
        let mut v = json!({
            "name": self.name,
            "image": self.image,
            "imageID": self.image_id,
            "state": self.state.to_json(),
            "lastState": self.last_state.as_ref().map(CState::to_json).unwrap_or(json!({})),
            "ready": self.is_ready(),
            "started": self.running() && self.started,
            "restartCount": self.restart_count,
        });
        if !self.container_id.is_empty() {
            v["containerID"] = json!(self.container_id);
        }
        v
    }
}

/// What the agent tracks per pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRecord {
    pub init: Vec<ContainerRecord>,
    pub containers: Vec<ContainerRecord>,
    pub initialized: bool,
    /// Set when an init container failed under `restartPolicy: Never`.
    pub init_failed: bool,
    pub pod_ip: String,
    pub host_ip: String,
    pub start_time: String,
}

/// The pod phase, following the kubelet's rules.
pub fn phase(rec: &PodRecord, restart_policy: &str) -> &'static str {
    if rec.init_failed {
        return "Failed";
    }
    if !rec.initialized {
        return "Pending";
    }
    let (mut waiting, mut running, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in &rec.containers {
        match &c.state {
            CState::Running { .. } => running += 1,
            CState::Terminated { exit_code, .. } => {
                stopped += 1;
                if *exit_code == 0 {
                    succeeded += 1;
                }
            }
            CState::Waiting { .. } if c.last_state.is_some() => stopped += 1,
            CState::Waiting { .. } => waiting += 1,
        }
    }
    if waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        match restart_policy {
            "Always" => "Running",
            _ if stopped == succeeded
                && rec
                    .containers
                    .iter()
                    .all(|c| matches!(c.state, CState::Terminated { .. })) =>
            {
                "Succeeded"
            }
            "Never" => "Failed",
            _ if rec
                .containers
                .iter()
                .all(|c| matches!(c.state, CState::Terminated { .. })) =>
            {
                "Failed"
            }
            _ => "Running",
        }
    } else {
        "Pending"
    }
}

fn condition(kind: &str, ok: bool, previous: &Value, now: &str) -> Value {
    let status = if ok { "True" } else { "False" };
    // keep the transition time while the status is unchanged
    let since = previous["conditions"]
        .as_array()
        .and_then(|cs| {
            cs.iter()
                .find(|c| c["type"] == kind && c["status"] == status)
        })
        .and_then(|c| c["lastTransitionTime"].as_str())
        .unwrap_or(now)
        .to_string();
    json!({"type": kind, "status": status, "lastProbeTime": null, "lastTransitionTime": since})
}

/// The full `status` of a pod; `previous` is the status currently stored
/// (its `qosClass`, set by the API server at creation, is kept).
pub fn pod_status(rec: &PodRecord, restart_policy: &str, previous: &Value, now: &str) -> Value {
    let phase = phase(rec, restart_policy);
    let ready = phase == "Running" && rec.containers.iter().all(ContainerRecord::is_ready);
    json!({
        "phase": phase,
        "conditions": [
            condition("PodScheduled", true, previous, now),
            condition("Initialized", rec.initialized, previous, now),
            condition("ContainersReady", ready, previous, now),
            condition("Ready", ready, previous, now),
        ],
        "hostIP": rec.host_ip,
        "hostIPs": [{"ip": rec.host_ip}],
        "podIP": rec.pod_ip,
        "podIPs": [{"ip": rec.pod_ip}],
        "startTime": rec.start_time,
        "qosClass": previous["qosClass"].as_str().unwrap_or("BestEffort"),
        "initContainerStatuses": rec.init.iter().map(ContainerRecord::to_json).collect::<Vec<_>>(),
        "containerStatuses": rec.containers.iter().map(ContainerRecord::to_json).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn term(code: i32) -> CState {
        CState::Terminated {
            exit_code: code,
            reason: if code == 0 {
                "Completed".into()
            } else {
                "Error".into()
            },
            message: None,
            started_at: "t".into(),
            finished_at: "t".into(),
        }
    }

    fn rec(states: Vec<CState>) -> PodRecord {
        PodRecord {
            init: vec![],
            containers: states
                .into_iter()
                .enumerate()
                .map(|(i, s)| ContainerRecord {
                    state: s,
                    started: true,
                    ready: true,
                    ..ContainerRecord::new(&format!("c{i}"), "i")
                })
                .collect(),
            initialized: true,
            init_failed: false,
            pod_ip: "127.1.0.2".into(),
            host_ip: "127.0.0.1".into(),
            start_time: "t".into(),
        }
    }

    #[test]
    fn phases_follow_the_kubelet() {
        let running = CState::Running {
            started_at: "t".into(),
        };
        assert_eq!(
            phase(&rec(vec![CState::waiting("ContainerCreating")]), "Always"),
            "Pending"
        );
        assert_eq!(
            phase(&rec(vec![running.clone(), term(0)]), "Never"),
            "Running"
        );
        assert_eq!(phase(&rec(vec![term(0), term(0)]), "Never"), "Succeeded");
        assert_eq!(phase(&rec(vec![term(0), term(1)]), "Never"), "Failed");
        assert_eq!(phase(&rec(vec![term(0), term(1)]), "OnFailure"), "Failed");
        assert_eq!(phase(&rec(vec![term(0)]), "Always"), "Running");
        let mut backoff = rec(vec![CState::waiting("CrashLoopBackOff")]);
        backoff.containers[0].last_state = Some(term(1));
        assert_eq!(phase(&backoff, "Always"), "Running");
        assert_eq!(phase(&backoff, "OnFailure"), "Running");
        let mut init = rec(vec![]);
        init.initialized = false;
        assert_eq!(phase(&init, "Always"), "Pending");
        init.init_failed = true;
        assert_eq!(phase(&init, "Never"), "Failed");
    }

    #[test]
    fn status_has_conditions_and_container_states() {
        let r = rec(vec![CState::Running {
            started_at: "2026-01-01T00:00:00Z".into(),
        }]);
        let s = pod_status(&r, "Always", &Value::Null, "now");
        assert_eq!(s["phase"], "Running");
        assert_eq!(
            s["conditions"][3],
            json!({"type": "Ready", "status": "True", "lastProbeTime": null, "lastTransitionTime": "now"})
        );
        assert_eq!(
            s["containerStatuses"][0]["state"]["running"]["startedAt"],
            "2026-01-01T00:00:00Z"
        );
        assert_eq!(s["containerStatuses"][0]["ready"], true);
        // an unchanged condition keeps its transition time
        let again = pod_status(&r, "Always", &s, "later");
        assert_eq!(again["conditions"][3]["lastTransitionTime"], "now");
        // a running container failing its readiness probe is not ready, nor is the pod
        let mut unready = r.clone();
        unready.containers[0].ready = false;
        let s = pod_status(&unready, "Always", &s, "later");
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["containerStatuses"][0]["ready"], false);
        assert_eq!(s["containerStatuses"][0]["started"], true);
        assert_eq!(s["conditions"][3]["status"], "False");
        assert_eq!(s["conditions"][3]["lastTransitionTime"], "later");
    }
}
