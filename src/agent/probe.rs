//! Container probes (startup, liveness, readiness) as the kubelet runs them.
//!
//! - [`Probe::parse`] reads a probe from the container spec (pure);
//! - [`Tracker`] turns results into transitions with the probe's success and
//!   failure thresholds (pure);
//! - [`check`] performs one `exec`, `tcpSocket` or `httpGet` check (I/O).
//!
//! An exec probe runs its command as an exec in the container: for a Wasm
//! container, a fresh instance of its module with `command` as argv.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use wasmkube_runtime::{ContainerId, ContainerRuntime, ExecIo};

/// What a probe checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Exec {
        command: Vec<String>,
    },
    Tcp {
        host: Option<String>,
        port: u16,
    },
    Http {
        scheme: String,
        host: Option<String>,
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
    },
}

/// A probe with Kubernetes' defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub action: Action,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

/// A port given by number or by the name of one of the container's ports.
fn port(v: &Value, container: &Value) -> Result<u16, String> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("invalid port {n}")),
        Value::String(s) => match s.parse::<u16>() {
            Ok(n) => Ok(n),
            Err(_) => container["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["name"] == s.as_str())
                .and_then(|p| p["containerPort"].as_u64())
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| format!("no container port named {s:?}")),
        },
        _ => Err("port is required".into()),
    }
}

impl Probe {
    /// The probe `which` (`livenessProbe`, ...) of `container`, if it has one.
    pub fn parse(container: &Value, which: &str) -> Result<Option<Probe>, String> {
        let p = &container[which];
        if p.is_null() {
            return Ok(None);
        }
        let secs = |k: &str, default: u64| Duration::from_secs(p[k].as_u64().unwrap_or(default));
        let count = |k: &str| p[k].as_u64().filter(|n| *n > 0).unwrap_or(0) as u32;
        let action = parse_action(p, which, container)?;
        let default_success = 1;
        Ok(Some(Probe {
            action,
            initial_delay: secs("initialDelaySeconds", 0),
            period: secs("periodSeconds", 10).max(Duration::from_secs(1)),
            timeout: secs("timeoutSeconds", 1).max(Duration::from_secs(1)),
            success_threshold: match count("successThreshold") {
                0 => default_success,
                n => n,
            },
            failure_threshold: match count("failureThreshold") {
                0 => 3,
                n => n,
            },
        }))
    }
}

/// A lifecycle hook (`postStart`, `preStop`) of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hook {
    Run(Action),
    /// `sleep: {seconds: N}`
    Sleep(Duration),
}

impl Hook {
    /// The container's `lifecycle.<which>` hook, if it has one.
    pub fn parse(container: &Value, which: &str) -> Result<Option<Hook>, String> {
        let h = &container["lifecycle"][which];
        if h.is_null() {
            return Ok(None);
        }
        if let Some(secs) = h["sleep"]["seconds"].as_u64() {
            return Ok(Some(Hook::Sleep(Duration::from_secs(secs))));
        }
        parse_action(h, &format!("lifecycle.{which}"), container).map(|a| Some(Hook::Run(a)))
    }
}

/// Run a hook, for at most `limit`; `Err` carries the kubelet's message.
pub async fn run_hook(hook: &Hook, target: &Target<'_>, limit: Duration) -> Result<(), String> {
    let run = async {
        match hook {
            Hook::Sleep(d) => {
                tokio::time::sleep(*d).await;
                Ok(())
            }
            Hook::Run(action) => check_once(action, target).await,
        }
    };
    match tokio::time::timeout(limit, run).await {
        Ok(r) => r,
        Err(_) => Err(format!("hook timed out after {}s", limit.as_secs())),
    }
}

/// The handler of a probe or hook `p` (exec, tcpSocket or httpGet).
fn parse_action(p: &Value, which: &str, container: &Value) -> Result<Action, String> {
    {
        let action = if let Some(e) = p.get("exec") {
            let command: Vec<String> = e["command"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(String::from))
                .collect();
            if command.is_empty() {
                return Err(format!("{which}.exec.command is empty"));
            }
            Action::Exec { command }
        } else if let Some(t) = p.get("tcpSocket") {
            Action::Tcp {
                host: t["host"].as_str().map(String::from),
                port: port(&t["port"], container).map_err(|e| format!("{which}.tcpSocket: {e}"))?,
            }
        } else if let Some(h) = p.get("httpGet") {
            Action::Http {
                scheme: h["scheme"].as_str().unwrap_or("HTTP").to_ascii_lowercase(),
                host: h["host"].as_str().map(String::from),
                port: port(&h["port"], container).map_err(|e| format!("{which}.httpGet: {e}"))?,
                path: h["path"].as_str().unwrap_or("/").to_string(),
                headers: h["httpHeaders"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|x| {
                        Some((
                            x["name"].as_str()?.to_string(),
                            x["value"].as_str()?.to_string(),
                        ))
                    })
                    .collect(),
            }
        } else {
            return Err(format!(
                "{which}: one of exec, tcpSocket or httpGet is required"
            ));
        };
        Ok(action)
    }
}

/// A change the results of a probe call for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// `success_threshold` consecutive successes.
    Succeeded,
    /// `failure_threshold` consecutive failures.
    Failed,
}

/// Counts consecutive results against a probe's thresholds. The first
/// result decides as soon as its threshold is met; after that only a change
/// of outcome is reported.
#[derive(Debug, Clone)]
pub struct Tracker {
    success_threshold: u32,
    failure_threshold: u32,
    successes: u32,
    failures: u32,
    last: Option<Transition>,
}

impl Tracker {
    pub fn new(p: &Probe) -> Self {
        Self {
            success_threshold: p.success_threshold,
            failure_threshold: p.failure_threshold,
            successes: 0,
            failures: 0,
            last: None,
        }
    }

    /// Record one result; returns the transition it completes, if any.
    pub fn observe(&mut self, ok: bool) -> Option<Transition> {
        let reached = if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            (self.successes >= self.success_threshold).then_some(Transition::Succeeded)
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            (self.failures >= self.failure_threshold).then_some(Transition::Failed)
        };
        match reached {
            Some(t) if self.last != Some(t) => {
                self.last = Some(t);
                Some(t)
            }
            _ => None,
        }
    }
}

/// Where a check runs: the container and its pod's address.
pub struct Target<'a> {
    pub runtime: &'a Arc<dyn ContainerRuntime>,
    pub id: &'a ContainerId,
    pub pod_ip: &'a str,
    pub http: &'a reqwest::Client,
}

/// Run one check; `Err` carries the message of the kubelet's `Unhealthy` event.
pub async fn check(probe: &Probe, target: &Target<'_>) -> Result<(), String> {
    match tokio::time::timeout(probe.timeout, check_once(&probe.action, target)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "probe timed out after {}s",
            probe.timeout.as_secs()
        )),
    }
}

async fn check_once(action: &Action, target: &Target<'_>) -> Result<(), String> {
    match action {
        Action::Exec { command } => {
            use tokio::io::AsyncReadExt;
            let (mut out_r, out_w) = tokio::io::duplex(4096);
            let io = ExecIo {
                resize: None,
                tty: false,
                stdin: None,
                stdout: Box::new(out_w),
                stderr: Box::new(tokio::io::sink()),
            };
            let run = target.runtime.exec(target.id, command.clone(), io);
            let mut out = Vec::new();
            let (exit, _) = tokio::join!(run, out_r.read_to_end(&mut out));
            let exit = exit.map_err(|e| e.to_string())?;
            if exit.exit_code == 0 {
                Ok(())
            } else {
                let out = String::from_utf8_lossy(&out);
                Err(format!(
                    "command {command:?} exited with {}: {}",
                    exit.exit_code,
                    out.trim()
                ))
            }
        }
        Action::Tcp { host, port } => {
            let host = host.as_deref().unwrap_or(target.pod_ip);
            tokio::net::TcpStream::connect((host, *port))
                .await
                .map(drop)
                .map_err(|e| format!("dial tcp {host}:{port}: connect: {e}"))
        }
        Action::Http {
            scheme,
            host,
            port,
            path,
            headers,
        } => {
            let host = host.as_deref().unwrap_or(target.pod_ip);
            let url = format!("{scheme}://{host}:{port}{path}");
            let mut req = target.http.get(&url);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            let resp = req.send().await.map_err(|e| format!("Get {url:?}: {e}"))?;
            let code = resp.status().as_u16();
            if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(format!("HTTP probe failed with statuscode: {code}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn probes_parse_with_kubernetes_defaults_and_named_ports() {
        let c = json!({
            "name": "web",
            "ports": [{"name": "http", "containerPort": 8080}],
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
            "readinessProbe": {"tcpSocket": {"port": 9000}, "periodSeconds": 2, "failureThreshold": 1},
            "startupProbe": {"exec": {"command": ["web", "check"]}, "successThreshold": 1},
        });
        let live = Probe::parse(&c, "livenessProbe").unwrap().unwrap();
        assert_eq!(
            live.action,
            Action::Http {
                scheme: "http".into(),
                host: None,
                port: 8080,
                path: "/healthz".into(),
                headers: vec![],
            }
        );
        assert_eq!(
            (
                live.period,
                live.timeout,
                live.success_threshold,
                live.failure_threshold
            ),
            (Duration::from_secs(10), Duration::from_secs(1), 1, 3)
        );
        let ready = Probe::parse(&c, "readinessProbe").unwrap().unwrap();
        assert_eq!(
            ready.action,
            Action::Tcp {
                host: None,
                port: 9000
            }
        );
        assert_eq!(
            (ready.period, ready.failure_threshold),
            (Duration::from_secs(2), 1)
        );
        let start = Probe::parse(&c, "startupProbe").unwrap().unwrap();
        assert_eq!(
            start.action,
            Action::Exec {
                command: vec!["web".into(), "check".into()]
            }
        );
        assert_eq!(Probe::parse(&json!({}), "livenessProbe").unwrap(), None);
        let bad = json!({"livenessProbe": {"httpGet": {"port": "nope"}}});
        let err = Probe::parse(&bad, "livenessProbe").unwrap_err();
        assert!(err.contains("no container port named \"nope\""), "{err}");
        let empty = json!({"readinessProbe": {"periodSeconds": 1}});
        assert!(Probe::parse(&empty, "readinessProbe").is_err());
    }

    fn tracker(success: u32, failure: u32) -> Tracker {
        Tracker::new(&Probe {
            action: Action::Tcp {
                host: None,
                port: 1,
            },
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: success,
            failure_threshold: failure,
        })
    }

    #[test]
    fn thresholds_count_consecutive_results_and_report_changes_once() {
        let mut t = tracker(1, 3);
        assert_eq!(t.observe(true), Some(Transition::Succeeded));
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(true), None, "a success resets the failures");
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), Some(Transition::Failed));
        assert_eq!(t.observe(false), None);
        let mut t = tracker(2, 1);
        assert_eq!(t.observe(false), Some(Transition::Failed));
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(true), Some(Transition::Succeeded));
    }

    proptest::proptest! {
        /// A transition is reported only after exactly its threshold of
        /// consecutive equal results, and never twice in a row.
        #[test]
        fn transitions_need_their_threshold(results in proptest::collection::vec(proptest::bool::ANY, 0..64), s in 1u32..4, f in 1u32..4) {
            let mut t = tracker(s, f);
            let mut last = None;
            for (i, ok) in results.iter().enumerate() {
                if let Some(tr) = t.observe(*ok) {
                    let need = if *ok { s } else { f } as usize;
                    proptest::prop_assert!(i + 1 >= need);
                    proptest::prop_assert!(results[i + 1 - need..=i].iter().all(|r| r == ok));
                    proptest::prop_assert!(last != Some(tr));
                    last = Some(tr);
                }
            }
        }
    }
}
