//! Jobs and CronJobs against a real server: completions with parallelism,
//! retries of a flaky task, the backoff limit, and a CronJob firing on a
//! one-minute schedule.

use reqwest::Method;
use serde_json::{json, Value};

use crate::util::{eventually, stdout, Server};

const JOBS: &str = "/apis/batch/v1/namespaces/default/jobs";

fn example(name: &str) -> String {
    crate::util::example_image("wasm32-wasip1", name)
}

fn job(name: &str, spec: Value, pod: Value) -> Value {
    let mut spec = spec;
    spec["template"] = json!({"spec": pod});
    json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": spec})
}

fn condition(j: &Value) -> (String, String) {
    j["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["status"] == "True"))
        .map(|c| {
            (
                c["type"].as_str().unwrap_or("").to_string(),
                c["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .unwrap_or_default()
}

async fn finished(s: &Server, name: &str) -> Value {
    eventually(90, &format!("job {name} finishes"), || async {
        let (_, j) = s.call(Method::GET, &format!("{JOBS}/{name}"), None).await;
        (!condition(&j).0.is_empty()).then_some(j)
    })
    .await
}

#[tokio::test]
async fn jobs_complete_retry_and_give_up_at_their_backoff_limit() {
    let s = Server::builder()
        .arg("--backoff-base-ms")
        .arg("200")
        .start()
        .await;
    let hello =
        json!({"restartPolicy": "Never", "containers": [{"name": "h", "image": example("hello")}]});
    s.call(
        Method::POST,
        JOBS,
        Some(job(
            "batch",
            json!({"completions": 4, "parallelism": 2}),
            hello,
        )),
    )
    .await;

    // fails twice, succeeds on the third attempt: OnFailure restarts it in place
    let dir = tempfile::tempdir().unwrap();
    let flaky = json!({"restartPolicy": "OnFailure",
        "volumes": [{"name": "state", "hostPath": {"path": dir.path()}}],
        "containers": [{"name": "f", "image": example("crashloop"), "args": ["3", "/state"],
            "volumeMounts": [{"name": "state", "mountPath": "/state"}]}]});
    s.call(
        Method::POST,
        JOBS,
        Some(job("flaky", json!({"backoffLimit": 4}), flaky)),
    )
    .await;

    let hopeless = json!({"restartPolicy": "Never", "containers": [{"name": "c", "image": example("crashloop")}]});
    s.call(
        Method::POST,
        JOBS,
        Some(job("hopeless", json!({"backoffLimit": 1}), hopeless)),
    )
    .await;

    let j = finished(&s, "batch").await;
    assert_eq!(condition(&j).0, "Complete");
    assert_eq!(
        (
            j["status"]["succeeded"].as_i64(),
            j["status"]["active"].as_i64()
        ),
        (Some(4), Some(0))
    );
    assert!(j["status"]["completionTime"].is_string());
    let (_, pods) = s
        .call(
            Method::GET,
            "/api/v1/namespaces/default/pods?labelSelector=job-name%3Dbatch",
            None,
        )
        .await;
    assert_eq!(pods["items"].as_array().unwrap().len(), 4);

    let j = finished(&s, "flaky").await;
    assert_eq!(condition(&j).0, "Complete", "{j}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("attempts")).unwrap(),
        "3"
    );

    let j = finished(&s, "hopeless").await;
    assert_eq!(
        condition(&j),
        ("Failed".to_string(), "BackoffLimitExceeded".to_string())
    );
    assert_eq!(j["status"]["failed"], 2, "one try plus one retry");

    let out = stdout(&s.wkctl(&["get", "jobs"]));
    assert!(out.lines().any(|l| l.starts_with("batch ")), "{out}");
}

#[tokio::test]
async fn a_cronjob_fires_on_its_schedule_and_keeps_its_history() {
    let s = Server::start().await;
    let cj = json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "tick"},
        "spec": {"schedule": "* * * * *", "successfulJobsHistoryLimit": 1,
            "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "h", "image": example("hello")}]}}}}}});
    let (code, body) = s
        .call(
            Method::POST,
            "/apis/batch/v1/namespaces/default/cronjobs",
            Some(cj),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    // the next minute boundary is at most 60 s away
    let j = eventually(75, "the first scheduled job completes", || async {
        let (_, l) = s.call(Method::GET, JOBS, None).await;
        l["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| condition(j).0 == "Complete")
            .cloned()
    })
    .await;
    let name = j["metadata"]["name"].as_str().unwrap();
    let minutes: i64 = name.strip_prefix("tick-").unwrap().parse().unwrap();
    let scheduled = j["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"]
        .as_str()
        .unwrap();
    let at = chrono::DateTime::parse_from_rfc3339(scheduled).unwrap();
    assert_eq!(at.timestamp() / 60, minutes);
    assert_eq!(at.timestamp() % 60, 0, "on a minute boundary");
    assert_eq!(j["metadata"]["ownerReferences"][0]["kind"], "CronJob");
    let cj = eventually(20, "status shows the last schedule", || async {
        let (_, cj) = s
            .call(
                Method::GET,
                "/apis/batch/v1/namespaces/default/cronjobs/tick",
                None,
            )
            .await;
        cj["status"]["lastSuccessfulTime"].is_string().then_some(cj)
    })
    .await;
    assert_eq!(cj["status"]["lastScheduleTime"], scheduled);
}
