//! The CronJob controller: creates a Job for every time the standard cron
//! schedule names (UTC), honouring `suspend`, `concurrencyPolicy` (Allow,
//! Forbid, Replace), `startingDeadlineSeconds` for missed runs, and the
//! successful and failed history limits. Job names carry the scheduled
//! minute (`NAME-<minutes since the epoch>`), as Kubernetes does, so a run is
//! never created twice.
//!
//! [`Schedule`] and [`plan`] decide (pure).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Datelike, Duration as Span, TimeZone, Timelike, Utc};
use serde_json::{json, Value};

use super::job::finished;
use super::replicaset::owner_ref;
use super::CancelToken;
use crate::api::{meta, resources};
use crate::client::runtime::{self, Cache, Next, Reconcile, Watch, WorkQueue};
use crate::client::{Client, ClientError};

/// A parsed five-field cron schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    any_day: bool,
    any_weekday: bool,
}

fn field(text: &str, lo: u32, hi: u32, names: &[&str]) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    let value = |x: &str| -> Result<u32, String> {
        let l = x.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == l) {
            return Ok(i as u32 + lo);
        }
        x.parse().map_err(|_| format!("invalid value {x:?}"))
    };
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .map_err(|_| format!("invalid step {s:?}"))?,
            ),
            None => (part, 1),
        };
        if step == 0 {
            return Err("a step of 0".into());
        }
        let (a, b) = if range == "*" || range == "?" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let v = value(range)?;
            (v, if part.contains('/') { hi } else { v })
        };
        if a < lo || b > hi || a > b {
            return Err(format!("{range:?} is outside {lo}-{hi}"));
        }
        let mut v = a;
        while v <= b {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, text == "*" || text == "?"))
}

impl Schedule {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let s = match s {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let fields: Vec<&str> = s.split_whitespace().collect();
        let [mi, h, d, mo, w] = fields[..] else {
            return Err(format!("expected 5 fields in {s:?}"));
        };
        const MONTHS: [&str; 12] = [
            "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        ];
        const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
        let (weekdays, any_weekday) = field(w, 0, 7, &DAYS)?;
        let (days, any_day) = field(d, 1, 31, &[])?;
        Ok(Schedule {
            minutes: field(mi, 0, 59, &[])?.0,
            hours: field(h, 0, 23, &[])?.0 as u32,
            days: days as u32,
            months: field(mo, 1, 12, &MONTHS)?.0 as u16,
            // 7 is Sunday too
            weekdays: ((weekdays | (weekdays >> 7)) & 0x7f) as u8,
            any_day,
            any_weekday,
        })
    }

    fn day_matches(&self, t: &DateTime<Utc>) -> bool {
        let dom = self.days & (1 << t.day()) != 0;
        let dow = self.weekdays & (1 << t.weekday().num_days_from_sunday()) != 0;
        match (self.any_day, self.any_weekday) {
            (true, true) => true,
            (false, true) => dom,
            (true, false) => dow,
            // both restricted: either matches (cron's rule)
            (false, false) => dom || dow,
        }
    }

    /// The first scheduled minute strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut c = Utc
            .with_ymd_and_hms(t.year(), t.month(), t.day(), t.hour(), t.minute(), 0)
            .single()?
            + Span::minutes(1);
        let limit = t + Span::days(366 * 5);
        while c <= limit {
            if self.months & (1 << c.month()) == 0 {
                let (y, m) = if c.month() == 12 {
                    (c.year() + 1, 1)
                } else {
                    (c.year(), c.month() + 1)
                };
                c = Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).single()?;
            } else if !self.day_matches(&c) {
                c = Utc
                    .with_ymd_and_hms(c.year(), c.month(), c.day(), 0, 0, 0)
                    .single()?
                    + Span::days(1);
            } else if self.hours & (1 << c.hour()) == 0 {
                c = Utc
                    .with_ymd_and_hms(c.year(), c.month(), c.day(), c.hour(), 0, 0)
                    .single()?
                    + Span::hours(1);
            } else if self.minutes & (1 << c.minute()) == 0 {
                c += Span::minutes(1);
            } else {
                return Some(c);
            }
        }
        None
    }
}

fn parse_time(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(Into::into)
}

fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// What to do for one CronJob.
#[derive(Debug, Default)]
pub struct Plan {
    /// Create this Job now (for this scheduled time).
    pub create: Option<(Value, DateTime<Utc>)>,
    /// Jobs to delete: replaced ones and history beyond the limits.
    pub delete: Vec<String>,
    pub status: Value,
    /// The next scheduled time, to look again then.
    pub next: Option<DateTime<Utc>>,
}

/// Decide for `cj` given its Jobs.
pub fn plan(cj: &Value, jobs: &[Arc<Value>], now: DateTime<Utc>) -> Result<Plan, String> {
    let spec = &cj["spec"];
    let schedule = Schedule::parse(spec["schedule"].as_str().unwrap_or(""))?;
    let mut plan = Plan::default();
    let active: Vec<&Arc<Value>> = jobs
        .iter()
        .filter(|j| finished(j).is_none() && !meta::is_deleting(j))
        .collect();
    // the latest scheduled time not yet acted on
    let since = parse_time(&cj["status"]["lastScheduleTime"])
        .or_else(|| parse_time(&cj["metadata"]["creationTimestamp"]))
        .unwrap_or(now);
    let mut due = None;
    let mut t = since;
    while let Some(n) = schedule.next_after(t) {
        if n > now {
            plan.next = Some(n);
            break;
        }
        due = Some(n);
        t = n;
    }
    let mut last_schedule = cj["status"]["lastScheduleTime"].clone();
    let mut active_after: Vec<&Arc<Value>> = active.clone();
    if let Some(at) = due {
        let too_late = spec["startingDeadlineSeconds"]
            .as_i64()
            .is_some_and(|d| now.signed_duration_since(at).num_seconds() > d);
        let suspended = spec["suspend"].as_bool().unwrap_or(false);
        let policy = spec["concurrencyPolicy"].as_str().unwrap_or("Allow");
        if too_late || suspended {
            // a missed or suspended run is not made up later
            last_schedule = json!(ts(at));
        } else if policy == "Forbid" && !active.is_empty() {
            // wait: the run happens when the active one ends, unless past its deadline
        } else {
            if policy == "Replace" {
                plan.delete
                    .extend(active.iter().map(|j| meta::name(j).to_string()));
                active_after.clear();
            }
            plan.create = Some((job_for(cj, at), at));
            last_schedule = json!(ts(at));
        }
    }
    // history limits
    let mut done: Vec<&Arc<Value>> = jobs.iter().filter(|j| finished(j).is_some()).collect();
    done.sort_by_key(|j| {
        j["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap_or("")
            .to_string()
    });
    for (kind, limit) in [
        (
            "Complete",
            spec["successfulJobsHistoryLimit"].as_i64().unwrap_or(3),
        ),
        (
            "Failed",
            spec["failedJobsHistoryLimit"].as_i64().unwrap_or(1),
        ),
    ] {
        let of_kind: Vec<&&Arc<Value>> =
            done.iter().filter(|j| finished(j) == Some(kind)).collect();
        let extra = of_kind.len().saturating_sub(limit.max(0) as usize);
        plan.delete
            .extend(of_kind[..extra].iter().map(|j| meta::name(j).to_string()));
    }
    let last_success = jobs
        .iter()
        .filter(|j| finished(j) == Some("Complete"))
        .filter_map(|j| j["status"]["completionTime"].as_str())
        .max()
        .map(|s| json!(s))
        .unwrap_or_else(|| cj["status"]["lastSuccessfulTime"].clone());
    let mut status = json!({
        "active": active_after.iter().map(|j| json!({"apiVersion": "batch/v1", "kind": "Job",
            "name": meta::name(j), "namespace": meta::namespace(j), "uid": j["metadata"]["uid"]})).collect::<Vec<_>>(),
    });
    if !last_schedule.is_null() {
        status["lastScheduleTime"] = last_schedule;
    }
    if !last_success.is_null() {
        status["lastSuccessfulTime"] = last_success;
    }
    plan.status = status;
    Ok(plan)
}

fn job_for(cj: &Value, at: DateTime<Utc>) -> Value {
    let t = &cj["spec"]["jobTemplate"];
    let mut metadata = json!({
        "name": format!("{}-{}", meta::name(cj), at.timestamp() / 60),
        "namespace": meta::namespace(cj),
        "ownerReferences": [owner_ref(cj, "batch/v1", "CronJob")],
        "annotations": {"batch.kubernetes.io/cronjob-scheduled-timestamp": ts(at)},
    });
    if t["metadata"]["labels"].is_object() {
        metadata["labels"] = t["metadata"]["labels"].clone();
    }
    json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": t["spec"]})
}

struct Controller {
    client: Client,
    cronjobs: Arc<Cache>,
    jobs: Arc<Cache>,
}

impl Reconcile for Controller {
    async fn reconcile(&self, key: String) -> Result<Next, ClientError> {
        let Some(cj) = self.cronjobs.get_live(&key) else {
            return Ok(Next::Done);
        };
        let ns = meta::namespace(&cj).to_string();
        let uid = cj["metadata"]["uid"].as_str().unwrap_or("");
        let jobs: Vec<Arc<Value>> = self.jobs.owned_by(&ns, uid);
        let now = Utc::now();
        let plan = match plan(&cj, &jobs, now) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(cronjob = %key, error = %e, "unparseable schedule");
                return Ok(Next::Done);
            }
        };
        let jobs_res = resources::lookup("jobs").expect("jobs are served");
        let cj_res = resources::lookup("cronjobs").expect("cronjobs are served");
        for name in &plan.delete {
            let body = json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"});
            match self
                .client
                .request(
                    reqwest::Method::DELETE,
                    &jobs_res.object_path(Some(&ns), name),
                    Some(&body),
                )
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        let mut status = plan.status.clone();
        if let Some((job, _)) = &plan.create {
            match self.client.create(jobs_res, Some(&ns), job).await {
                Ok(created) => {
                    if let Some(active) = status["active"].as_array_mut() {
                        active.push(json!({"apiVersion": "batch/v1", "kind": "Job", "name": meta::name(&created),
                            "namespace": ns, "uid": created["metadata"]["uid"]}));
                    }
                }
                // already created for this time (a retry): fine
                Err(e) if e.code() == Some(409) => {}
                Err(e) => return Err(e),
            }
        }
        if !runtime::update_status(&self.client, cj_res, &cj, &status).await? {
            return Ok(Next::Done);
        }
        let wait = plan
            .next
            .and_then(|n| (n - now).to_std().ok())
            .unwrap_or(Duration::from_secs(60))
            .min(Duration::from_secs(60));
        Ok(Next::After(wait + Duration::from_millis(50)))
    }
}

/// Run the CronJob controller until `cancel`.
pub async fn run(client: Client, cancel: CancelToken) {
    let (cronjobs, jobs) = (Cache::new(), Cache::new());
    let queue = WorkQueue::new();
    let watches = vec![
        Watch::new("cronjobs", &cronjobs, runtime::enqueue_self(&queue)),
        Watch::new(
            "jobs",
            &jobs,
            runtime::enqueue_controller(&queue, "CronJob"),
        ),
    ];
    let controller = Arc::new(Controller {
        client: client.clone(),
        cronjobs,
        jobs,
    });
    runtime::run_controller("cronjob", &client, watches, queue, 2, controller, cancel).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().into()
    }

    #[test]
    fn schedules_find_their_next_minute() {
        let every_5 = Schedule::parse("*/5 * * * *").unwrap();
        assert_eq!(
            every_5.next_after(at("2026-11-25T12:03:30Z")),
            Some(at("2026-11-25T12:05:00Z"))
        );
        assert_eq!(
            every_5.next_after(at("2026-11-25T12:05:00Z")),
            Some(at("2026-11-25T12:10:00Z"))
        );
        let weekdays_9 = Schedule::parse("30 9 * * mon-fri").unwrap();
        // 2026-11-28 is a Saturday
        assert_eq!(
            weekdays_9.next_after(at("2026-11-27T10:00:00Z")),
            Some(at("2026-11-30T09:30:00Z"))
        );
        let yearly = Schedule::parse("@yearly").unwrap();
        assert_eq!(
            yearly.next_after(at("2026-11-25T00:00:00Z")),
            Some(at("2027-01-01T00:00:00Z"))
        );
        let either = Schedule::parse("0 0 13 * 5").unwrap();
        // the 13th, or any Friday
        assert_eq!(
            either.next_after(at("2026-11-25T00:00:00Z")),
            Some(at("2026-11-27T00:00:00Z"))
        );
        let sunday7 = Schedule::parse("0 12 * * 7").unwrap();
        assert_eq!(
            sunday7.next_after(at("2026-11-25T00:00:00Z")),
            Some(at("2026-11-29T12:00:00Z"))
        );
        assert!(Schedule::parse("61 * * * *").is_err());
        assert!(Schedule::parse("* * *").is_err());
        assert_eq!(
            Schedule::parse("0 0 30 2 *")
                .unwrap()
                .next_after(at("2026-01-01T00:00:00Z")),
            None
        );
    }

    fn cronjob(policy: &str, last: &str) -> Value {
        json!({"metadata": {"name": "tick", "namespace": "d", "uid": "cj-1", "creationTimestamp": "2026-11-25T12:00:00Z"},
            "spec": {"schedule": "* * * * *", "concurrencyPolicy": policy,
                "jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}}},
            "status": {"lastScheduleTime": last}})
    }

    fn job(name: &str, done: Option<&str>) -> Arc<Value> {
        let mut j = json!({"metadata": {"name": name, "creationTimestamp": name}, "status": {}});
        if let Some(kind) = done {
            j["status"]["conditions"] = json!([{"type": kind, "status": "True"}]);
            j["status"]["completionTime"] = json!("2026-11-25T12:01:30Z");
        }
        Arc::new(j)
    }

    #[test]
    fn a_due_run_creates_one_job_named_for_its_minute() {
        let p = plan(
            &cronjob("Allow", "2026-11-25T12:01:00Z"),
            &[],
            at("2026-11-25T12:03:10Z"),
        )
        .unwrap();
        let (job, when) = p.create.unwrap();
        // only the latest missed run is made up
        assert_eq!(when, at("2026-11-25T12:03:00Z"));
        assert_eq!(
            job["metadata"]["name"],
            format!("tick-{}", when.timestamp() / 60)
        );
        assert_eq!(p.status["lastScheduleTime"], "2026-11-25T12:03:00Z");
        assert_eq!(p.next, Some(at("2026-11-25T12:04:00Z")));
        let p = plan(
            &cronjob("Allow", "2026-11-25T12:03:00Z"),
            &[],
            at("2026-11-25T12:03:10Z"),
        )
        .unwrap();
        assert!(p.create.is_none(), "nothing due yet");
    }

    #[test]
    fn concurrency_policies_forbid_replace_and_history_limits() {
        let now = at("2026-11-25T12:03:10Z");
        let running = job("a-running", None);
        let p = plan(
            &cronjob("Forbid", "2026-11-25T12:02:00Z"),
            std::slice::from_ref(&running),
            now,
        )
        .unwrap();
        assert!(p.create.is_none());
        let p = plan(
            &cronjob("Replace", "2026-11-25T12:02:00Z"),
            std::slice::from_ref(&running),
            now,
        )
        .unwrap();
        assert!(p.create.is_some());
        assert_eq!(p.delete, ["a-running"]);
        let history: Vec<Arc<Value>> = ["1", "2", "3", "4"]
            .iter()
            .map(|n| job(n, Some("Complete")))
            .chain([job("f1", Some("Failed")), job("f2", Some("Failed"))])
            .collect();
        let p = plan(&cronjob("Allow", "2026-11-25T12:03:00Z"), &history, now).unwrap();
        assert_eq!(p.delete, ["1", "f1"]);
        assert_eq!(p.status["lastSuccessfulTime"], "2026-11-25T12:01:30Z");
        let mut suspended = cronjob("Allow", "2026-11-25T12:02:00Z");
        suspended["spec"]["suspend"] = json!(true);
        assert!(plan(&suspended, &[], now).unwrap().create.is_none());
    }
}
