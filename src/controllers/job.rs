//! The Job controller: runs pods from the template until `completions` of
//! them succeed, `parallelism` at a time; fails the Job past `backoffLimit`
//! failed pods or `activeDeadlineSeconds`; deletes a finished Job after
//! `ttlSecondsAfterFinished`.
//!
//! [`plan`] is the decision (pure).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::replicaset::{create_and_delete, owner_ref, Expectations};
use super::CancelToken;
use crate::api::{meta, resources};
use crate::client::runtime::{self, Cache, Next, Reconcile, Watch, WorkQueue};
use crate::client::{Client, ClientError};

fn parse_time(v: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    v.as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(Into::into)
}

fn ts(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Whether a Job has finished (a Complete or Failed condition).
pub fn finished(job: &Value) -> Option<&str> {
    job["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True")
        .and_then(|c| c["type"].as_str())
}

/// What to do for one Job.
#[derive(Debug, Default)]
pub struct Plan {
    pub create: usize,
    pub delete: Vec<Arc<Value>>,
    pub status: Value,
    /// Delete the Job itself (its TTL after finishing has passed).
    pub delete_job: bool,
    pub recheck: Option<Duration>,
}

/// Decide for `job` given its pods.
pub fn plan(job: &Value, pods: &[Arc<Value>], now: chrono::DateTime<chrono::Utc>) -> Plan {
    let spec = &job["spec"];
    let mut plan = Plan::default();
    let phase = |p: &Value| p["status"]["phase"].as_str().unwrap_or("").to_string();
    let succeeded = pods.iter().filter(|p| phase(p) == "Succeeded").count();
    let restarts: usize = pods
        .iter()
        .flat_map(|p| {
            p["status"]["containerStatuses"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|c| c["restartCount"].as_u64().unwrap_or(0) as usize)
        .sum();
    let failed = pods.iter().filter(|p| phase(p) == "Failed").count() + restarts;
    let active: Vec<&Arc<Value>> = pods
        .iter()
        .filter(|p| !meta::is_deleting(p) && !matches!(phase(p).as_str(), "Succeeded" | "Failed"))
        .collect();
    let ready = active
        .iter()
        .filter(|p| super::replicaset::is_ready(p))
        .count();
    let mut status = json!({
        "active": active.len(),
        "succeeded": succeeded,
        "failed": failed,
        "ready": ready,
        "startTime": job["status"]["startTime"].as_str().map(String::from).unwrap_or_else(|| ts(now)),
    });
    let mut conditions = job["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if let Some(done) = finished(job) {
        status["active"] = json!(0);
        status["conditions"] = json!(conditions);
        if let Some(c) = job["status"]["completionTime"].as_str() {
            status["completionTime"] = json!(c);
        }
        plan.delete = active.into_iter().cloned().collect();
        let end = conditions
            .iter()
            .find(|c| c["type"] == done)
            .and_then(|c| parse_time(&c["lastTransitionTime"]));
        if let (Some(ttl), Some(end)) = (spec["ttlSecondsAfterFinished"].as_i64(), end) {
            let due = end + chrono::Duration::seconds(ttl);
            if now >= due {
                plan.delete_job = true;
            } else {
                plan.recheck = (due - now).to_std().ok();
            }
        }
        plan.status = status;
        return plan;
    }
    let completions = spec["completions"].as_i64().map(|c| c.max(0) as usize);
    let parallelism = spec["parallelism"].as_i64().unwrap_or(1).max(0) as usize;
    let backoff_limit = spec["backoffLimit"].as_i64().unwrap_or(6).max(0) as usize;
    let started = parse_time(&status["startTime"]).unwrap_or(now);
    let deadline = spec["activeDeadlineSeconds"].as_i64();
    let mut finish = |kind: &str, reason: &str, message: &str| {
        conditions.push(
            json!({"type": kind, "status": "True", "reason": reason, "message": message,
            "lastProbeTime": ts(now), "lastTransitionTime": ts(now)}),
        );
    };
    let complete = match completions {
        Some(c) => succeeded >= c,
        None => succeeded >= 1 && active.is_empty(),
    };
    if complete {
        finish("Complete", "", "");
        status["completionTime"] = json!(ts(now));
    } else if failed > backoff_limit {
        finish(
            "Failed",
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
        );
        plan.delete = active.iter().map(|p| (*p).clone()).collect();
    } else if deadline.is_some_and(|d| now.signed_duration_since(started).num_seconds() >= d) {
        finish(
            "Failed",
            "DeadlineExceeded",
            "Job was active longer than specified deadline",
        );
        plan.delete = active.iter().map(|p| (*p).clone()).collect();
    } else {
        let want = match completions {
            Some(c) => parallelism.min(c - succeeded),
            None if succeeded > 0 => 0,
            None => parallelism,
        };
        if want > active.len() {
            plan.create = want - active.len();
        } else if active.len() > want {
            plan.delete = active[want..].iter().map(|p| (*p).clone()).collect();
        }
        if let Some(d) = deadline {
            let left = d - now.signed_duration_since(started).num_seconds();
            plan.recheck = Some(Duration::from_secs(left.max(1) as u64));
        }
    }
    if plan.delete.is_empty() && !conditions.is_empty() {
        status["active"] = json!(active.len());
    }
    status["conditions"] = json!(conditions);
    plan.status = status;
    plan
}

/// A pod for `job` from its template.
fn pod_for(job: &Value) -> Value {
    let t = &job["spec"]["template"];
    let mut labels = t["metadata"]["labels"].clone();
    if !labels.is_object() {
        labels = json!({});
    }
    labels["batch.kubernetes.io/job-name"] = json!(meta::name(job));
    labels["job-name"] = json!(meta::name(job));
    labels["batch.kubernetes.io/controller-uid"] = job["metadata"]["uid"].clone();
    let mut metadata = json!({
        "name": format!("{}-{}", meta::name(job), meta::random_suffix()),
        "namespace": meta::namespace(job),
        "labels": labels,
        "ownerReferences": [owner_ref(job, "batch/v1", "Job")],
    });
    if t["metadata"]["annotations"].is_object() {
        metadata["annotations"] = t["metadata"]["annotations"].clone();
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": t["spec"]})
}

struct Controller {
    client: Client,
    jobs: Arc<Cache>,
    pods: Arc<Cache>,
    expectations: Expectations,
}

impl Reconcile for Controller {
    async fn reconcile(&self, key: String) -> Result<Next, ClientError> {
        let jobs_res = resources::lookup("jobs").expect("jobs are served");
        let Some(job) = self.jobs.get_live(&key) else {
            return Ok(Next::Done);
        };
        let ns = meta::namespace(&job).to_string();
        let uid = job["metadata"]["uid"].as_str().unwrap_or("");
        let pods: Vec<Arc<Value>> = self.pods.owned_by(&ns, uid);
        if !self.expectations.satisfied(&key, &pods) {
            return Ok(Next::Done);
        }
        let plan = plan(&job, &pods, chrono::Utc::now());
        if plan.delete_job {
            let body = json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"});
            let path = jobs_res.object_path(Some(&ns), meta::name(&job));
            match self
                .client
                .request(reqwest::Method::DELETE, &path, Some(&body))
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
            return Ok(Next::Done);
        }
        let new: Vec<Value> = (0..plan.create).map(|_| pod_for(&job)).collect();
        let gone: Vec<String> = plan
            .delete
            .iter()
            .map(|p| meta::name(p).to_string())
            .collect();
        create_and_delete(&self.client, &self.expectations, &key, &ns, &new, &gone).await?;
        if !runtime::update_status(
            &self.client,
            resources::lookup("jobs").expect("jobs are served"),
            &job,
            &plan.status,
        )
        .await?
        {
            return Ok(Next::Done);
        }
        Ok(plan.recheck.map_or(Next::Done, Next::After))
    }
}

/// Run the Job controller until `cancel`.
pub async fn run(client: Client, cancel: CancelToken) {
    let (jobs, pods) = (Cache::new(), Cache::new());
    let queue = WorkQueue::new();
    let watches = vec![
        Watch::new("jobs", &jobs, runtime::enqueue_self(&queue)),
        Watch::new("pods", &pods, runtime::enqueue_controller(&queue, "Job")),
    ];
    let controller = Arc::new(Controller {
        client: client.clone(),
        jobs,
        pods,
        expectations: Expectations::default(),
    });
    runtime::run_controller("job", &client, watches, queue, 4, controller, cancel).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(spec: Value) -> Value {
        json!({"metadata": {"name": "j", "namespace": "d", "uid": "j-1"}, "spec": spec, "status": {}})
    }

    fn pod(phase: &str, restarts: u64) -> Arc<Value> {
        Arc::new(
            json!({"metadata": {"name": format!("p-{phase}-{restarts}")},
            "status": {"phase": phase, "containerStatuses": [{"restartCount": restarts}]}}),
        )
    }

    #[test]
    fn runs_parallelism_pods_until_completions_succeed() {
        let now = chrono::Utc::now();
        let j = job(json!({"completions": 5, "parallelism": 2}));
        assert_eq!(plan(&j, &[], now).create, 2);
        let p = plan(
            &j,
            &[
                pod("Succeeded", 0),
                pod("Succeeded", 0),
                pod("Succeeded", 0),
                pod("Running", 0),
            ],
            now,
        );
        assert_eq!(p.create, 1);
        let p = plan(&j, &vec![pod("Succeeded", 0); 5], now);
        assert_eq!(p.create, 0);
        assert_eq!(p.status["conditions"][0]["type"], "Complete");
        assert!(p.status["completionTime"].is_string());
    }

    #[test]
    fn fails_past_the_backoff_limit_counting_restarts() {
        let now = chrono::Utc::now();
        let j = job(json!({"backoffLimit": 2}));
        let p = plan(&j, &[pod("Failed", 0), pod("Failed", 0)], now);
        assert_eq!(p.create, 1, "two failures are within a limit of 2");
        let p = plan(&j, &[pod("Failed", 0), pod("Running", 2)], now);
        assert_eq!(p.status["conditions"][0]["reason"], "BackoffLimitExceeded");
        assert_eq!(p.delete.len(), 1, "the running pod is stopped");
    }

    #[test]
    fn the_active_deadline_and_the_ttl_after_finishing_are_enforced() {
        let now = chrono::Utc::now();
        let mut j = job(json!({"activeDeadlineSeconds": 10}));
        j["status"]["startTime"] = json!(ts(now - chrono::Duration::seconds(11)));
        let p = plan(&j, &[pod("Running", 0)], now);
        assert_eq!(p.status["conditions"][0]["reason"], "DeadlineExceeded");
        let mut done = job(json!({"ttlSecondsAfterFinished": 5}));
        done["status"]["conditions"] = json!([{"type": "Complete", "status": "True", "lastTransitionTime": ts(now - chrono::Duration::seconds(6))}]);
        assert!(plan(&done, &[], now).delete_job);
        done["spec"]["ttlSecondsAfterFinished"] = json!(60);
        let p = plan(&done, &[], now);
        assert!(!p.delete_job && p.recheck.is_some());
    }
}
