//! The audit log: one `audit.k8s.io/v1` Event per request at the Metadata
//! level (who, verb, what, response code, when), as JSON lines, written by
//! one task so requests never wait on the disk, and rotated by size.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::auth::attributes::Target;
use crate::auth::UserInfo;

/// One request, as the audit log records it.
pub struct Entry {
    pub verb: String,
    pub uri: String,
    /// The authenticated user (None when authentication failed).
    pub user: Option<UserInfo>,
    /// The user impersonated, if any.
    pub impersonated: Option<UserInfo>,
    pub target: Target,
    pub source: String,
    pub user_agent: String,
    pub code: u16,
    /// `allow` or `forbid`.
    pub decision: &'static str,
    pub started: chrono::DateTime<chrono::Utc>,
    /// Annotations admission added (PodSecurity's audit findings).
    pub annotations: Vec<(String, String)>,
}

/// Where audit events go. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Entry>,
}

/// How the log file is kept.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub path: PathBuf,
    /// Rotate when the file passes this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept (older ones are deleted).
    pub max_backups: usize,
}

fn micro(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn user_json(u: &UserInfo) -> Value {
    serde_json::to_value(u).unwrap_or(Value::Null)
}

impl Entry {
    /// The `audit.k8s.io/v1` Event.
    pub fn to_event(&self) -> Value {
        let mut ev = json!({
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": "Metadata",
            "auditID": uuid::Uuid::new_v4().to_string(),
            "stage": "ResponseComplete",
            "requestURI": self.uri,
            "verb": self.verb,
            "user": self.user.as_ref().map(user_json).unwrap_or(json!({"username": "system:anonymous", "groups": ["system:unauthenticated"]})),
            "sourceIPs": [self.source],
            "userAgent": self.user_agent,
            "responseStatus": {"metadata": {}, "code": self.code},
            "requestReceivedTimestamp": micro(self.started),
            "stageTimestamp": micro(chrono::Utc::now()),
            "annotations": {"authorization.k8s.io/decision": self.decision},
        });
        for (k, v) in &self.annotations {
            ev["annotations"][k] = json!(v);
        }
        if let Some(i) = &self.impersonated {
            ev["impersonatedUser"] = user_json(i);
        }
        if let Target::Resource {
            group,
            version,
            resource,
            subresource,
            namespace,
            name,
        } = &self.target
        {
            let mut r = serde_json::Map::new();
            for (k, v) in [
                ("resource", resource),
                ("namespace", namespace),
                ("name", name),
                ("apiGroup", group),
                ("apiVersion", version),
                ("subresource", subresource),
            ] {
                if !v.is_empty() {
                    r.insert(k.into(), json!(v));
                }
            }
            ev["objectRef"] = Value::Object(r);
        }
        ev
    }
}

impl AuditLog {
    /// Open (append to) the log and start its writer.
    pub fn open(config: AuditConfig) -> std::io::Result<Self> {
        if let Some(dir) = config.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_append(&config.path)?;
        let (tx, rx) = mpsc::channel(16 * 1024);
        std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || writer(config, file, rx))?;
        Ok(Self { tx })
    }

    /// Queue an event; when the writer is far behind the event is dropped
    /// (and counted) rather than slowing the request.
    pub fn record(&self, e: Entry) {
        if self.tx.try_send(e).is_err() {
            tracing::warn!("audit log is behind: an event was dropped");
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// The name a rotated file gets: `audit-2026-12-01T10-00-00.000.log`, as
/// kube-apiserver's lumberjack names them.
fn backup_name(path: &Path) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "audit".into());
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    let ts = chrono::Utc::now().format("%Y-%m-%dT%H-%M-%S%.3f");
    path.with_file_name(format!("{stem}-{ts}{ext}"))
}

fn backups(path: &Path) -> Vec<PathBuf> {
    let stem = path
        .file_stem()
        .map(|s| format!("{}-", s.to_string_lossy()))
        .unwrap_or_default();
    let Some(dir) = path.parent() else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p != path
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&stem))
        })
        .collect();
    out.sort();
    out
}

fn writer(config: AuditConfig, file: std::fs::File, mut rx: mpsc::Receiver<Entry>) {
    let mut size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut out = std::io::BufWriter::new(file);
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        while let Some(e) = next {
            let mut line = e.to_event().to_string();
            line.push('\n');
            if size > 0 && size + line.len() as u64 > config.max_bytes {
                let _ = out.flush();
                let mut rotated = backup_name(&config.path);
                while rotated.exists() {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    rotated = backup_name(&config.path);
                }
                if std::fs::rename(&config.path, &rotated).is_ok() {
                    let old = backups(&config.path);
                    for p in old
                        .iter()
                        .take(old.len().saturating_sub(config.max_backups))
                    {
                        let _ = std::fs::remove_file(p);
                    }
                }
                match open_append(&config.path) {
                    Ok(f) => {
                        out = std::io::BufWriter::new(f);
                        size = 0;
                    }
                    Err(err) => tracing::warn!(error = %err, "reopening the audit log"),
                }
            }
            if out.write_all(line.as_bytes()).is_ok() {
                size += line.len() as u64;
            }
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: usize) -> Entry {
        Entry {
            verb: "get".into(),
            uri: format!("/api/v1/namespaces/default/pods/p{i}"),
            user: Some(UserInfo::new("jane", &[])),
            impersonated: None,
            target: crate::auth::attributes::request_target(
                "GET",
                &format!("/api/v1/namespaces/default/pods/p{i}"),
                None,
            )
            .1,
            source: "127.0.0.1".into(),
            user_agent: "test".into(),
            code: 200,
            decision: "allow",
            started: chrono::Utc::now(),
            annotations: Vec::new(),
        }
    }

    #[test]
    fn events_say_who_did_what_and_the_file_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(AuditConfig {
            path: path.clone(),
            max_bytes: 2000,
            max_backups: 2,
        })
        .unwrap();
        for i in 0..40 {
            log.record(entry(i));
        }
        drop(log);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let all: String = backups(&path)
                .iter()
                .chain(std::iter::once(&path))
                .map(|p| std::fs::read_to_string(p).unwrap_or_default())
                .collect();
            if all.contains("/p39\"") || std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let current = std::fs::read_to_string(&path).unwrap();
        let last: Value = serde_json::from_str(current.lines().last().unwrap()).unwrap();
        assert_eq!(last["apiVersion"], "audit.k8s.io/v1");
        assert_eq!(last["level"], "Metadata");
        assert_eq!(last["user"]["username"], "jane");
        assert_eq!(last["objectRef"]["resource"], "pods");
        assert_eq!(last["objectRef"]["name"], "p39");
        assert_eq!(last["responseStatus"]["code"], 200);
        assert!(current.len() <= 2000, "rotated by size");
        assert_eq!(backups(&path).len(), 2, "only max_backups are kept");
    }
}
