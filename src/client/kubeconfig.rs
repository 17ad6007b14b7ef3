//! Reading and writing the standard kubeconfig file: the current context's
//! server, the CA it is verified with, and the user's client certificate
//! or bearer token (inline `-data` fields or file paths, as kubectl reads them).

use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::{json, Value};

use crate::tls::KeyPairPem;

/// A kubeconfig could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error("cannot read kubeconfig {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kubeconfig {path} is not valid YAML: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("kubeconfig {path}: {what}")]
    Missing { path: PathBuf, what: String },
    #[error("cannot write kubeconfig {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The current context's server and credentials.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Kubeconfig {
    pub server: String,
    /// PEM of the CA the server's certificate must chain to.
    pub ca: Option<String>,
    /// `insecure-skip-tls-verify`.
    pub insecure: bool,
    /// The user's client certificate and key (PEM).
    pub client_cert: Option<KeyPairPem>,
    /// The user's bearer token.
    pub token: Option<String>,
    pub namespace: Option<String>,
}

impl std::fmt::Debug for Kubeconfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubeconfig")
            .field("server", &self.server)
            .field("client_cert", &self.client_cert.is_some())
            .field("token", &self.token.is_some())
            .finish_non_exhaustive()
    }
}

fn find<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array()?
        .iter()
        .find(|e| e["name"].as_str() == Some(name))
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

impl Kubeconfig {
    /// Load the current context of the kubeconfig at `path`.
    pub fn load(path: &Path) -> Result<Self, KubeconfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| KubeconfigError::Read {
            path: path.into(),
            source,
        })?;
        let doc: Value = serde_saphyr::from_str(&text).map_err(|e| KubeconfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        let missing = |what: &str| KubeconfigError::Missing {
            path: path.into(),
            what: what.into(),
        };
        let current = doc["current-context"]
            .as_str()
            .ok_or_else(|| missing("no current-context"))?;
        let ctx = find(&doc["contexts"], current)
            .ok_or_else(|| missing(&format!("context {current:?} not found")))?;
        let cluster_name = ctx["context"]["cluster"].as_str().unwrap_or_default();
        let user_name = ctx["context"]["user"].as_str().unwrap_or_default();
        let cluster = &find(&doc["clusters"], cluster_name)
            .ok_or_else(|| missing(&format!("cluster {cluster_name:?} not found")))?["cluster"];
        let server = cluster["server"]
            .as_str()
            .ok_or_else(|| missing("cluster has no server"))?;
        let null = Value::Null;
        let user = find(&doc["users"], user_name)
            .map(|u| &u["user"])
            .unwrap_or(&null);
        let base = path.parent().unwrap_or(Path::new("."));
        // `NAME-data` (base64) or `NAME` (a file, relative to the kubeconfig)
        let field = |obj: &Value, name: &str| -> Result<Option<String>, KubeconfigError> {
            if let Some(d) = obj[format!("{name}-data")].as_str() {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(d.trim())
                    .map_err(|e| missing(&format!("{name}-data is not base64: {e}")))?;
                return String::from_utf8(bytes)
                    .map(Some)
                    .map_err(|_| missing(&format!("{name}-data is not PEM text")));
            }
            if let Some(file) = obj[name].as_str() {
                let p = base.join(file);
                return std::fs::read_to_string(&p)
                    .map(Some)
                    .map_err(|source| KubeconfigError::Read { path: p, source });
            }
            Ok(None)
        };
        let client_cert = match (
            field(user, "client-certificate")?,
            field(user, "client-key")?,
        ) {
            (Some(cert), Some(key)) => Some(KeyPairPem { cert, key }),
            (None, None) => None,
            _ => {
                return Err(missing(&format!(
                    "user {user_name:?} has only one of client-certificate and client-key"
                )))
            }
        };
        let token = match (user["token"].as_str(), user["tokenFile"].as_str()) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(f)) => Some(
                std::fs::read_to_string(base.join(f))
                    .map_err(|source| KubeconfigError::Read {
                        path: base.join(f),
                        source,
                    })?
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        };
        Ok(Self {
            server: server.to_string(),
            ca: field(cluster, "certificate-authority")?,
            insecure: cluster["insecure-skip-tls-verify"]
                .as_bool()
                .unwrap_or(false),
            client_cert,
            token,
            namespace: ctx["context"]["namespace"].as_str().map(String::from),
        })
    }

    /// The kubeconfig document for this context.
    pub fn to_yaml(&self) -> String {
        let mut cluster = json!({"server": self.server});
        if let Some(ca) = &self.ca {
            cluster["certificate-authority-data"] = json!(b64(ca));
        }
        if self.insecure {
            cluster["insecure-skip-tls-verify"] = json!(true);
        }
        let mut user = json!({});
        if let Some(c) = &self.client_cert {
            user["client-certificate-data"] = json!(b64(&c.cert));
            user["client-key-data"] = json!(b64(&c.key));
        }
        if let Some(t) = &self.token {
            user["token"] = json!(t);
        }
        let mut context = json!({"cluster": "wasmkube", "user": "admin"});
        if let Some(ns) = &self.namespace {
            context["namespace"] = json!(ns);
        }
        let doc = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "wasmkube", "cluster": cluster}],
            "users": [{"name": "admin", "user": user}],
            "contexts": [{"name": "wasmkube", "context": context}],
            "current-context": "wasmkube",
            "preferences": {},
        });
        serde_saphyr::to_string(&doc).unwrap_or_default()
    }

    /// Write atomically (temp file + rename), readable only by the owner.
    pub fn write(&self, path: &Path) -> Result<(), KubeconfigError> {
        crate::tls::pki::write_private(path, self.to_yaml().as_bytes()).map_err(|e| {
            KubeconfigError::Write {
                path: path.into(),
                source: std::io::Error::other(e.to_string()),
            }
        })
    }
}

/// The default data directory: `$WK_DATA_DIR`, else `/var/lib/wasmkube` for
/// root, else `~/.local/share/wasmkube`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("WK_DATA_DIR") {
        return PathBuf::from(d);
    }
    let is_root = std::fs::metadata("/proc/self").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid() == 0
    });
    if is_root.unwrap_or(false) {
        return PathBuf::from("/var/lib/wasmkube");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/wasmkube")
}

/// The kubeconfig a server writes into its data directory.
pub fn kubeconfig_path(data_dir: &Path) -> PathBuf {
    data_dir.join("kubeconfig.yaml")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_kubeconfig_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig.yaml");
        let kc = Kubeconfig {
            server: "https://127.0.0.1:6443".into(),
            ca: Some("-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n".into()),
            client_cert: Some(KeyPairPem {
                cert: "cert".into(),
                key: "key".into(),
            }),
            ..Default::default()
        };
        kc.write(&path).unwrap();
        assert_eq!(Kubeconfig::load(&path).unwrap(), kc);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("certificate-authority-data"), "{text}");
        assert!(text.contains("client-key-data"), "{text}");
    }

    #[test]
    fn file_references_are_relative_to_the_kubeconfig() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), "CA").unwrap();
        std::fs::write(dir.path().join("tok"), "abc\n").unwrap();
        let path = dir.path().join("k");
        std::fs::write(
            &path,
            "apiVersion: v1\nclusters: [{name: c, cluster: {server: 'https://x:1', certificate-authority: ca.crt}}]\n\
             users: [{name: u, user: {tokenFile: tok}}]\ncontexts: [{name: x, context: {cluster: c, user: u, namespace: dev}}]\n\
             current-context: x\n",
        )
        .unwrap();
        let kc = Kubeconfig::load(&path).unwrap();
        assert_eq!(kc.ca.as_deref(), Some("CA"));
        assert_eq!(kc.token.as_deref(), Some("abc"));
        assert_eq!(kc.namespace.as_deref(), Some("dev"));
    }

    #[test]
    fn broken_kubeconfig_names_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, "apiVersion: v1\nclusters: []\n").unwrap();
        let e = Kubeconfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("no current-context"), "{e}");
    }
}
