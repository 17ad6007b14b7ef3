//! Reading and writing the standard kubeconfig file.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kubeconfig {
    pub server: String,
    pub token: String,
    pub namespace: Option<String>,
}

fn find<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array()?
        .iter()
        .find(|e| e["name"].as_str() == Some(name))
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
        let cluster = find(&doc["clusters"], cluster_name)
            .ok_or_else(|| missing(&format!("cluster {cluster_name:?} not found")))?;
        let server = cluster["cluster"]["server"]
            .as_str()
            .ok_or_else(|| missing("cluster has no server"))?;
        let token = find(&doc["users"], user_name)
            .and_then(|u| u["user"]["token"].as_str())
            .ok_or_else(|| missing(&format!("user {user_name:?} has no token")))?;
        Ok(Self {
            server: server.to_string(),
            token: token.to_string(),
            namespace: ctx["context"]["namespace"].as_str().map(String::from),
        })
    }

    /// The kubeconfig document for this context.
    pub fn to_yaml(&self) -> String {
        let doc = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "wasmkube", "cluster": {"server": self.server}}],
            "users": [{"name": "admin", "user": {"token": self.token}}],
            "contexts": [{"name": "wasmkube", "context": {"cluster": "wasmkube", "user": "admin"}}],
            "current-context": "wasmkube",
            "preferences": {},
        });
        serde_saphyr::to_string(&doc).unwrap_or_default()
    }

    /// Write atomically (temp file + rename), readable only by the owner.
    pub fn write(&self, path: &Path) -> Result<(), KubeconfigError> {
        let tmp = path.with_extension("yaml.tmp");
        let io = |source| KubeconfigError::Write {
            path: path.into(),
            source,
        };
        std::fs::write(&tmp, self.to_yaml()).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_kubeconfig_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig.yaml");
        let kc = Kubeconfig {
            server: "http://127.0.0.1:6443".into(),
            token: "abc".into(),
            namespace: None,
        };
        kc.write(&path).unwrap();
        assert_eq!(Kubeconfig::load(&path).unwrap(), kc);
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
