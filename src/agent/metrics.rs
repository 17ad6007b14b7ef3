//! Resource and request metrics of this node's containers, sampled every
//! second from the runtime's counters: CPU as a rate (nanocores) over the
//! last window, memory in use, and for HTTP functions requests per second
//! and requests in flight. The API server gathers them from every agent
//! for `metrics.k8s.io` (so `wkctl top` works) and for the custom request
//! metrics the autoscaler uses.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::Agent;
use crate::controllers::CancelToken;

/// The sampling window.
pub const WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    at: Option<Instant>,
    cpu_nanos: u64,
    requests: u64,
}

/// One container's latest figures.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    pub nanocores: u64,
    pub memory_bytes: u64,
    pub requests_per_second: f64,
    pub in_flight: u64,
}

/// The rates between two cumulative samples (pure).
fn rates(prev: Sample, now: Sample, at: Instant, memory_bytes: u64, in_flight: u64) -> Rates {
    let secs = prev
        .at
        .map(|p| at.saturating_duration_since(p).as_secs_f64())
        .filter(|s| *s > 0.0);
    match secs {
        Some(secs) => Rates {
            nanocores: (now.cpu_nanos.saturating_sub(prev.cpu_nanos) as f64 / secs) as u64,
            memory_bytes,
            requests_per_second: now.requests.saturating_sub(prev.requests) as f64 / secs,
            in_flight,
        },
        None => Rates {
            memory_bytes,
            in_flight,
            ..Rates::default()
        },
    }
}

/// The sampler's state: per `namespace/pod/container`.
#[derive(Default)]
pub struct Metrics {
    last: Mutex<HashMap<String, (Sample, Rates)>>,
}

impl Metrics {
    /// Sample every running container once.
    pub fn sample(&self, agent: &Agent) {
        let now = Instant::now();
        let mut seen = Vec::new();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        for (key, pod) in agent.pods_snapshot() {
            for c in pod.container_names() {
                let Ok((rt, id)) = pod.exec_target(&c) else {
                    continue;
                };
                let Some(u) = rt.usage(&id) else {
                    continue;
                };
                let k = format!("{key}/{c}");
                let sample = Sample {
                    at: Some(now),
                    cpu_nanos: u.cpu_nanos,
                    requests: u.requests,
                };
                let prev = last.get(&k).map(|(s, _)| *s).unwrap_or_default();
                // a restarted container starts its counters again
                let prev = if u.cpu_nanos < prev.cpu_nanos || u.requests < prev.requests {
                    Sample::default()
                } else {
                    prev
                };
                let r = rates(prev, sample, now, u.memory_bytes, u.in_flight);
                last.insert(k.clone(), (sample, r));
                seen.push(k);
            }
        }
        last.retain(|k, _| seen.contains(k));
    }

    /// The `/stats` document: every container's rates by pod.
    pub fn document(&self, node: &str) -> Value {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let mut pods: HashMap<(String, String), Vec<Value>> = HashMap::new();
        let (mut node_cpu, mut node_mem) = (0u64, 0u64);
        for (k, (_, r)) in last.iter() {
            let mut parts = k.splitn(3, '/');
            let (Some(ns), Some(pod), Some(c)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            node_cpu += r.nanocores;
            node_mem += r.memory_bytes;
            pods.entry((ns.to_string(), pod.to_string()))
                .or_default()
                .push(
                    json!({"name": c, "nanocores": r.nanocores, "memoryBytes": r.memory_bytes,
                    "requestsPerSecond": r.requests_per_second, "inFlight": r.in_flight}),
                );
        }
        let mut pods: Vec<Value> = pods
            .into_iter()
            .map(|((ns, name), mut containers)| {
                containers.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
                json!({"namespace": ns, "name": name, "containers": containers})
            })
            .collect();
        pods.sort_by(|a, b| {
            (a["namespace"].as_str(), a["name"].as_str())
                .cmp(&(b["namespace"].as_str(), b["name"].as_str()))
        });
        json!({
            "node": {"name": node, "nanocores": node_cpu, "memoryBytes": node_mem},
            "pods": pods,
            "timestamp": crate::api::meta::now(),
            "windowSeconds": WINDOW.as_secs(),
        })
    }
}

/// Sample every [`WINDOW`] until `cancel`.
pub async fn run(agent: Arc<Agent>, mut cancel: CancelToken) {
    loop {
        agent.metrics.sample(&agent);
        tokio::select! {
            _ = tokio::time::sleep(WINDOW) => {}
            _ = cancel.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_deltas_over_the_window() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(2);
        let prev = Sample {
            at: Some(t0),
            cpu_nanos: 1_000_000_000,
            requests: 10,
        };
        let now = Sample {
            at: Some(t1),
            cpu_nanos: 2_000_000_000,
            requests: 30,
        };
        let r = rates(prev, now, t1, 4096, 3);
        assert_eq!(r.nanocores, 500_000_000, "1 s of CPU over 2 s: half a core");
        assert_eq!(r.requests_per_second, 10.0);
        assert_eq!((r.memory_bytes, r.in_flight), (4096, 3));
        // the first sample has no window yet
        let first = rates(Sample::default(), now, t1, 1, 0);
        assert_eq!(first.nanocores, 0);
    }
}
