//! The HorizontalPodAutoscaler controller (autoscaling/v2) for Deployments,
//! with scale to zero.
//!
//! Every sync period each HPA reads its metrics through the API
//! (`metrics.k8s.io` for CPU, `custom.metrics.k8s.io` for the request
//! metrics of HTTP functions), computes Kubernetes' proposal per metric
//! (`ceil(current × value / target)` within a 10 % tolerance; the sum over
//! pods divided by the target for AverageValue), takes the largest, applies
//! the scale-down stabilization window (the largest proposal in it) and
//! clamps to `[minReplicas, maxReplicas]`.
//!
//! `minReplicas: 0` is allowed (Kubernetes has it behind the
//! HPAScaleToZero gate). With no requests in flight and none in the
//! window, the Deployment goes to zero and its Services are marked
//! `wasmkube.io/scaled-to-zero`; the agents then hold a connection or
//! request to such a Service, mark it `wasmkube.io/activation-requested`,
//! and this controller scales the Deployment to one at once.
//!
//! [`proposal`] and [`stabilize`] decide (pure).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use super::CancelToken;
use crate::api::{meta, quantity, resources};
use crate::client::runtime::{self, Cache, Change, Next, Reconcile, Watch, WorkQueue};
use crate::client::{Client, ClientError};

/// The Service annotation set while its Deployment is scaled to zero.
pub const SCALED_TO_ZERO: &str = "wasmkube.io/scaled-to-zero";
/// The Service annotation an agent sets when a client waits for a replica.
pub const ACTIVATION_REQUESTED: &str = "wasmkube.io/activation-requested";

/// Kubernetes' tolerance: no change while the ratio is within 10 % of 1.
const TOLERANCE: f64 = 0.1;

/// The replicas one metric asks for. `values` are the per-pod readings
/// (CPU in millicores, requests as counts); `requests` the pods' CPU
/// requests in millicores (for Utilization targets). None: the metric
/// cannot be computed (no readings, or a target we do not know).
pub fn proposal(metric: &Value, current: i64, values: &[f64], requests: f64) -> Option<i64> {
    let target = match metric["type"].as_str()? {
        "Resource" => &metric["resource"]["target"],
        "Pods" => &metric["pods"]["target"],
        _ => return None,
    };
    let sum: f64 = values.iter().sum();
    let pods = values.len() as f64;
    match target["type"].as_str()? {
        "Utilization" => {
            let want = target["averageUtilization"].as_f64()?;
            if pods == 0.0 || requests <= 0.0 {
                return None;
            }
            let utilization = sum / requests * 100.0;
            let ratio = utilization / want;
            if (ratio - 1.0).abs() <= TOLERANCE {
                return Some(current);
            }
            Some((ratio * pods).ceil() as i64)
        }
        "AverageValue" => {
            let want = quantity_value(&target["averageValue"])?;
            if want <= 0.0 {
                return None;
            }
            if pods == 0.0 {
                // no readings yet (a replica just started): no proposal
                return None;
            }
            let ratio = (sum / pods) / want;
            if (ratio - 1.0).abs() <= TOLERANCE && current > 0 {
                return Some(current);
            }
            Some((sum / want).ceil() as i64)
        }
        _ => None,
    }
}

/// A number as a milli-quantity (`1.5` → `1500m`).
fn milli(v: f64) -> String {
    format!("{}m", (v * 1000.0).round() as i64)
}

/// A `status.currentMetrics` entry: the per-pod average of one metric
/// (and the CPU utilization, given each pod's CPU request in cores).
pub fn metric_status(metric: &Value, avg: f64, request: Option<f64>) -> Value {
    match metric["type"].as_str() {
        Some("Resource") => {
            let mut current = json!({"averageValue": milli(avg)});
            if let Some(r) = request.filter(|r| *r > 0.0) {
                current["averageUtilization"] = json!((avg / r * 100.0).round() as i64);
            }
            json!({"type": "Resource", "resource": {"name": metric["resource"]["name"], "current": current}})
        }
        _ => json!({"type": "Pods", "pods": {"metric": metric["pods"]["metric"],
            "current": {"averageValue": milli(avg)}}}),
    }
}

/// A quantity as a number (`100m` → 0.1, `5` → 5).
fn quantity_value(v: &Value) -> Option<f64> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    quantity::millicores(&s).ok().map(|m| m as f64 / 1000.0)
}

/// Scale-down stabilization: the largest recommendation within `window`
/// (so a dip does not scale down at once); scale-ups apply at once.
pub fn stabilize(history: &[(Instant, i64)], now: Instant, window: Duration, desired: i64) -> i64 {
    history
        .iter()
        .filter(|(at, _)| now.saturating_duration_since(*at) <= window)
        .map(|(_, r)| *r)
        .chain([desired])
        .max()
        .unwrap_or(desired)
}

/// The label selector query of a Deployment (`matchLabels`).
fn selector_query(deploy: &Value) -> Option<String> {
    let labels = deploy["spec"]["selector"]["matchLabels"].as_object()?;
    let s: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    Some(s.join(","))
}

/// `labelSelector=...`, URL-encoded.
fn selector_param(query: &str) -> String {
    serde_urlencoded::to_string([("labelSelector", query)]).unwrap_or_default()
}

/// The Services whose selector picks the Deployment's pods.
fn services_of<'a>(deploy: &Value, services: &'a [Arc<Value>]) -> Vec<&'a Arc<Value>> {
    let labels = &deploy["spec"]["template"]["metadata"]["labels"];
    services
        .iter()
        .filter(|s| meta::namespace(s) == meta::namespace(deploy))
        .filter(|s| {
            s["spec"]["selector"]
                .as_object()
                .is_some_and(|sel| !sel.is_empty() && sel.iter().all(|(k, v)| labels[k] == *v))
        })
        .collect()
}

struct Controller {
    client: Client,
    hpas: Arc<Cache>,
    deployments: Arc<Cache>,
    services: Arc<Cache>,
    sync_period: Duration,
    history: Mutex<HashMap<String, Vec<(Instant, i64)>>>,
}

impl Controller {
    /// Per-pod readings of one metric for the pods `query` selects.
    async fn readings(
        &self,
        ns: &str,
        query: &str,
        metric: &Value,
    ) -> Result<Vec<f64>, ClientError> {
        match metric["type"].as_str() {
            Some("Resource") if metric["resource"]["name"] == "cpu" => {
                let list = self
                    .client
                    .request(
                        Method::GET,
                        &format!(
                            "/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods?{}",
                            selector_param(query)
                        ),
                        None,
                    )
                    .await?;
                Ok(list["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        p["containers"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|c| c["usage"]["cpu"].as_str())
                            .filter_map(|q| quantity::millicores(q).ok())
                            .sum::<u64>() as f64
                            / 1000.0
                    })
                    .collect())
            }
            Some("Pods") => {
                let name = metric["pods"]["metric"]["name"].as_str().unwrap_or("");
                let list = self
                    .client
                    .request(
                        Method::GET,
                        &format!(
                            "/apis/custom.metrics.k8s.io/v1beta2/namespaces/{ns}/pods/*/{name}?{}",
                            selector_param(query)
                        ),
                        None,
                    )
                    .await?;
                Ok(list["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|i| quantity_value(&i["value"]))
                    .collect())
            }
            _ => Ok(Vec::new()),
        }
    }

    async fn scale(&self, deploy: &Value, replicas: i64) -> Result<(), ClientError> {
        let res = resources::lookup("deployments").expect("deployments are served");
        self.client
            .merge_patch(
                res,
                Some(meta::namespace(deploy)),
                meta::name(deploy),
                &json!({"spec": {"replicas": replicas}}),
            )
            .await?;
        Ok(())
    }

    /// Mark (or unmark) the Deployment's Services as scaled to zero.
    async fn mark(&self, deploy: &Value, hpa: &str, zero: bool) -> Result<(), ClientError> {
        let res = resources::lookup("services").expect("services are served");
        for svc in services_of(deploy, &self.services.all()) {
            let ann = &svc["metadata"]["annotations"];
            let marked = ann[SCALED_TO_ZERO].is_string();
            if zero == marked && (zero || ann[ACTIVATION_REQUESTED].is_null()) {
                continue;
            }
            let patch = if zero {
                json!({"metadata": {"annotations": {SCALED_TO_ZERO: hpa}}})
            } else {
                json!({"metadata": {"annotations": {SCALED_TO_ZERO: null, ACTIVATION_REQUESTED: null}}})
            };
            match self
                .client
                .merge_patch(res, Some(meta::namespace(svc)), meta::name(svc), &patch)
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Reconcile for Controller {
    async fn reconcile(&self, key: String) -> Result<Next, ClientError> {
        let Some(hpa) = self.hpas.get_live(&key) else {
            self.history
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
            return Ok(Next::Done);
        };
        let ns = meta::namespace(&hpa).to_string();
        let target = &hpa["spec"]["scaleTargetRef"];
        if target["kind"] != "Deployment" {
            return Ok(Next::After(self.sync_period));
        }
        let Some(deploy) = self
            .deployments
            .get_live(&format!("{ns}/{}", target["name"].as_str().unwrap_or("")))
        else {
            return Ok(Next::After(self.sync_period));
        };
        let current = deploy["spec"]["replicas"].as_i64().unwrap_or(1);
        let min = hpa["spec"]["minReplicas"].as_i64().unwrap_or(1);
        let max = hpa["spec"]["maxReplicas"].as_i64().unwrap_or(1).max(min);
        let services = self.services.all();
        let activation = services_of(&deploy, &services)
            .iter()
            .any(|s| s["metadata"]["annotations"][ACTIVATION_REQUESTED].is_string());

        let mut current_metrics = Vec::new();
        let desired = if current == 0 {
            // at zero there are no readings: wake on demand only
            if activation {
                max.min(min.max(1))
            } else {
                0.max(min)
            }
        } else {
            let query = selector_query(&deploy).unwrap_or_default();
            let requests: f64 = deploy["spec"]["template"]["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["resources"]["requests"]["cpu"].as_str())
                .filter_map(|q| quantity::millicores(q).ok())
                .sum::<u64>() as f64
                / 1000.0;
            let mut proposals = Vec::new();
            for m in hpa["spec"]["metrics"].as_array().into_iter().flatten() {
                let values = match self.readings(&ns, &query, m).await {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::debug!(hpa = %key, error = %e, "metrics unavailable");
                        continue;
                    }
                };
                let pods = values.len() as f64;
                if let Some(p) = proposal(m, current, &values, requests * pods) {
                    proposals.push(p);
                }
                let avg = if pods > 0.0 {
                    values.iter().sum::<f64>() / pods
                } else {
                    0.0
                };
                if pods > 0.0 {
                    let per_pod_request = if requests > 0.0 { Some(requests) } else { None };
                    current_metrics.push(metric_status(m, avg, per_pod_request));
                }
            }
            let Some(raw) = proposals.into_iter().max() else {
                // no readings yet (replicas starting): report and keep the count
                let res = resources::lookup("horizontalpodautoscalers").expect("hpas are served");
                if hpa["status"]["currentReplicas"] != current {
                    let status = json!({"currentReplicas": current, "desiredReplicas": current,
                        "conditions": [{"type": "ScalingActive", "status": "False",
                            "reason": "FailedGetPodsMetric", "lastTransitionTime": meta::now(),
                            "message": "no metrics yet for the target's pods"}]});
                    runtime::update_status(&self.client, res, &hpa, &status).await?;
                }
                return Ok(Next::After(self.sync_period));
            };
            let raw = if activation { raw.max(1) } else { raw };
            let window = hpa
                .pointer("/spec/behavior/scaleDown/stabilizationWindowSeconds")
                .and_then(Value::as_u64)
                .map(Duration::from_secs)
                .unwrap_or(Duration::from_secs(300));
            let now = Instant::now();
            let stable = {
                let mut h = self.history.lock().unwrap_or_else(|e| e.into_inner());
                let list = h.entry(key.clone()).or_default();
                list.retain(|(at, _)| now.saturating_duration_since(*at) <= window);
                let s = stabilize(list, now, window, raw);
                list.push((now, raw));
                s
            };
            stable.clamp(min, max)
        };

        if current == 0 && desired > 0 {
            // woken up: the scale-down window starts now
            let mut h = self.history.lock().unwrap_or_else(|e| e.into_inner());
            h.entry(key.clone())
                .or_default()
                .push((Instant::now(), desired));
        }
        let hpa_name = format!("{ns}/{}", meta::name(&hpa));
        if desired != current {
            tracing::info!(hpa = %hpa_name, from = current, to = desired, "scaling");
            self.scale(&deploy, desired).await?;
        }
        self.mark(&deploy, &hpa_name, desired == 0).await?;
        let mut status = json!({"currentReplicas": current, "desiredReplicas": desired,
            "conditions": [
                {"type": "AbleToScale", "status": "True", "reason": "SucceededRescale", "lastTransitionTime": meta::now()},
                {"type": "ScalingActive", "status": if desired == 0 { "False" } else { "True" },
                 "reason": if desired == 0 { "ScalingDisabled" } else { "ValidMetricFound" },
                 "message": if desired == 0 { "scaled to zero: the next request activates a replica" } else { "the HPA was able to compute the replica count" },
                 "lastTransitionTime": meta::now()}]});
        if !current_metrics.is_empty() {
            status["currentMetrics"] = json!(current_metrics);
        }
        if desired != current {
            status["lastScaleTime"] = json!(meta::now());
        } else if hpa["status"]["lastScaleTime"].is_string() {
            status["lastScaleTime"] = hpa["status"]["lastScaleTime"].clone();
        }
        let res = resources::lookup("horizontalpodautoscalers").expect("hpas are served");
        let differs = hpa["status"]["currentReplicas"] != status["currentReplicas"]
            || hpa["status"]["desiredReplicas"] != status["desiredReplicas"]
            || hpa["status"]["lastScaleTime"] != status["lastScaleTime"]
            || hpa["status"]["currentMetrics"] != status["currentMetrics"];
        if differs {
            runtime::update_status(&self.client, res, &hpa, &status).await?;
        }
        Ok(Next::After(self.sync_period))
    }
}

/// Run the HPA controller until `cancel`, re-evaluating every `sync_period`.
pub async fn run(client: Client, sync_period: Duration, cancel: CancelToken) {
    let (hpas, deployments, services) = (Cache::new(), Cache::new(), Cache::new());
    let queue = WorkQueue::new();
    let by_target = {
        let (queue, hpas) = (queue.clone(), hpas.clone());
        move |c: Change| {
            let o = c.object();
            for h in hpas.in_namespace(meta::namespace(o)) {
                if h["spec"]["scaleTargetRef"]["name"] == o["metadata"]["name"] {
                    queue.add(&runtime::key_of(&h));
                }
            }
        }
    };
    let on_service = {
        let (queue, hpas) = (queue.clone(), hpas.clone());
        move |c: Change| {
            // an activation request wakes the namespace's autoscalers now
            let o = c.object();
            if o["metadata"]["annotations"][ACTIVATION_REQUESTED].is_string() {
                for h in hpas.in_namespace(meta::namespace(o)) {
                    queue.add(&runtime::key_of(&h));
                }
            }
        }
    };
    let watches = vec![
        Watch::new(
            "horizontalpodautoscalers",
            &hpas,
            runtime::enqueue_self(&queue),
        ),
        Watch::new("deployments", &deployments, by_target),
        Watch::new("services", &services, on_service),
    ];
    let controller = Arc::new(Controller {
        client: client.clone(),
        hpas,
        deployments,
        services,
        sync_period,
        history: Mutex::default(),
    });
    runtime::run_controller("hpa", &client, watches, queue, 2, controller, cancel).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposals_follow_kubernetes_arithmetic() {
        let inflight = json!({"type": "Pods", "pods": {"metric": {"name": "http_requests_in_flight"},
            "target": {"type": "AverageValue", "averageValue": "2"}}});
        // 3 pods with 4, 4, 4 in flight against a target of 2 each: 6 pods
        assert_eq!(proposal(&inflight, 3, &[4.0, 4.0, 4.0], 0.0), Some(6));
        // within the tolerance: stay
        assert_eq!(proposal(&inflight, 3, &[2.1, 2.0, 1.9], 0.0), Some(3));
        // idle: zero
        assert_eq!(proposal(&inflight, 2, &[0.0, 0.0], 0.0), Some(0));
        // no readings: no proposal (a fresh replica is not scaled away)
        assert_eq!(proposal(&inflight, 1, &[], 0.0), None);
        let rps = json!({"type": "Pods", "pods": {"metric": {"name": "http_requests_per_second"},
            "target": {"type": "AverageValue", "averageValue": "500m"}}});
        assert_eq!(proposal(&rps, 1, &[3.2], 0.0), Some(7));
        let cpu = json!({"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": 50}}});
        // 2 pods using 0.4 cores each of 0.2 requested each: 200 % vs 50 %: 8
        assert_eq!(proposal(&cpu, 2, &[0.4, 0.4], 0.4), Some(8));
        assert_eq!(proposal(&cpu, 2, &[0.4, 0.4], 0.0), None, "no requests");
        let cpu_value = json!({"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "AverageValue", "averageValue": "100m"}}});
        assert_eq!(proposal(&cpu_value, 1, &[0.35], 0.0), Some(4));
    }

    #[test]
    fn current_metrics_are_reported_as_kubernetes_does() {
        let cpu = json!({"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": 50}}});
        assert_eq!(
            metric_status(&cpu, 0.2, Some(0.1)),
            json!({"type": "Resource", "resource": {"name": "cpu",
                "current": {"averageValue": "200m", "averageUtilization": 200}}})
        );
        let pods = json!({"type": "Pods", "pods": {"metric": {"name": "http_requests_in_flight"},
            "target": {"type": "AverageValue", "averageValue": "1"}}});
        assert_eq!(
            metric_status(&pods, 1.5, None)["pods"]["current"]["averageValue"],
            "1500m"
        );
    }

    #[test]
    fn scale_down_waits_out_the_window() {
        let t0 = Instant::now();
        let window = Duration::from_secs(10);
        let history = vec![(t0, 5), (t0 + Duration::from_secs(5), 3)];
        assert_eq!(
            stabilize(&history, t0 + Duration::from_secs(8), window, 1),
            5
        );
        assert_eq!(
            stabilize(&history, t0 + Duration::from_secs(12), window, 1),
            3
        );
        assert_eq!(
            stabilize(&history, t0 + Duration::from_secs(30), window, 1),
            1
        );
        assert_eq!(stabilize(&history, t0, window, 9), 9, "up at once");
    }

    #[test]
    fn services_of_a_deployment_are_found_by_selector() {
        let d = json!({"metadata": {"name": "d", "namespace": "n"},
            "spec": {"template": {"metadata": {"labels": {"app": "f", "tier": "web"}}}}});
        let s = |name: &str, ns: &str, sel: Value| {
            Arc::new(
                json!({"metadata": {"name": name, "namespace": ns}, "spec": {"selector": sel}}),
            )
        };
        let all = vec![
            s("yes", "n", json!({"app": "f"})),
            s("other-ns", "m", json!({"app": "f"})),
            s("no", "n", json!({"app": "g"})),
            s("empty", "n", json!({})),
        ];
        let found: Vec<&str> = services_of(&d, &all)
            .iter()
            .map(|s| meta::name(s))
            .collect();
        assert_eq!(found, vec!["yes"]);
    }
}
