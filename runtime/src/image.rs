//! Images: node-local `file://` modules for development, and Wasm artifacts
//! in OCI registries (the CNCF layout: an `application/wasm` layer), pulled
//! with oci-client into a content-addressed store under the agent's data
//! directory, honouring `imagePullPolicy` and basic-auth pull secrets.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use sha2::{Digest, Sha256};

use crate::RuntimeError;

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// `file:///absolute/path/module.wasm`: a node-local file (development).
    File(PathBuf),
    /// Anything else: an OCI registry reference.
    Registry(String),
}

impl ImageRef {
    pub fn parse(image: &str) -> Self {
        match image.strip_prefix("file://") {
            Some(path) => ImageRef::File(PathBuf::from(path)),
            None => ImageRef::Registry(image.to_string()),
        }
    }
}

/// `imagePullPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn parse(s: &str) -> Self {
        match s {
            "Always" => PullPolicy::Always,
            "Never" => PullPolicy::Never,
            _ => PullPolicy::IfNotPresent,
        }
    }
}

/// Basic-auth credentials for a registry (from an `imagePullSecret`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// Module bytes with their content digest.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub bytes: Vec<u8>,
    /// `sha256:<hex>`.
    pub digest: String,
}

/// The `sha256:<hex>` digest of some bytes.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Load a node-local image.
pub async fn load_file(image: &str, path: &Path) -> Result<Loaded, RuntimeError> {
    if !path.is_absolute() {
        return Err(RuntimeError::Pull {
            image: image.into(),
            reason: "file:// images need an absolute path".into(),
        });
    }
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|e| RuntimeError::Pull {
            image: image.into(),
            reason: format!("reading {}: {e}", path.display()),
        })?;
    Ok(Loaded {
        digest: digest(&bytes),
        bytes,
    })
}

/// Layer media types accepted as a Wasm module or component.
pub const WASM_MEDIA_TYPES: &[&str] = &[
    "application/wasm",
    "application/vnd.wasm.content.layer.v1+wasm",
    "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm",
];

/// Pulled images, stored by digest, with an index from reference to digest.
pub struct ImageStore {
    dir: PathBuf,
    index: Mutex<HashMap<String, String>>,
}

/// Whether a registry is on this machine (spoken to over plain HTTP).
pub(crate) fn is_loopback(registry: &str) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
    host == "localhost" || host.starts_with("127.") || host == "[::1]"
}

impl ImageStore {
    /// A store under `dir` (blobs in `dir/blobs`, the index in `dir/index.json`).
    pub fn new(dir: PathBuf) -> Self {
        let index = std::fs::read(dir.join("index.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Self {
            dir,
            index: Mutex::new(index),
        }
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir.join("blobs").join(digest.replace(':', "-"))
    }

    fn cached(&self, reference: &str) -> Option<(String, PathBuf)> {
        let digest = self
            .index
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(reference)
            .cloned()?;
        let path = self.blob_path(&digest);
        path.exists().then_some((digest, path))
    }

    /// Bytes of `image`, pulled according to `policy`.
    pub async fn get(
        &self,
        image: &str,
        policy: PullPolicy,
        credentials: Option<&Credentials>,
    ) -> Result<Loaded, RuntimeError> {
        let fail = |reason: String| RuntimeError::Pull {
            image: image.into(),
            reason,
        };
        let reference: Reference = image
            .parse()
            .map_err(|e| fail(format!("invalid image reference: {e}")))?;
        let key = reference.whole();
        if policy != PullPolicy::Always {
            if let Some((digest, path)) = self.cached(&key) {
                let bytes = tokio::fs::read(&path)
                    .await
                    .map_err(|e| fail(format!("reading cached {}: {e}", path.display())))?;
                return Ok(Loaded { bytes, digest });
            }
        }
        if policy == PullPolicy::Never {
            return Err(RuntimeError::NeverPull {
                image: image.into(),
            });
        }
        let auth = match credentials {
            Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
            None => RegistryAuth::Anonymous,
        };
        // A client per pull: oci-client remembers the first credentials it
        // used for a registry, and each pod brings its own pull secrets.
        let protocol = if is_loopback(reference.resolve_registry()) {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        let client = registry_client(ClientConfig {
            protocol,
            ..Default::default()
        });
        let data = client
            .pull(&reference, &auth, WASM_MEDIA_TYPES.to_vec())
            .await
            .map_err(|e| fail(e.to_string()))?;
        let layer = data
            .layers
            .into_iter()
            .find(|l| WASM_MEDIA_TYPES.contains(&l.media_type.as_str()))
            .ok_or_else(|| fail("the image has no application/wasm layer".into()))?;
        let bytes = layer.data.to_vec();
        let digest = digest(&bytes);
        let path = self.blob_path(&digest);
        let write = async {
            tokio::fs::create_dir_all(self.dir.join("blobs")).await?;
            let tmp = path.with_extension("tmp");
            tokio::fs::write(&tmp, &bytes).await?;
            tokio::fs::rename(&tmp, &path).await?;
            let index = {
                let mut index = self.index.lock().unwrap_or_else(|e| e.into_inner());
                index.insert(key.clone(), digest.clone());
                serde_json::to_vec(&*index).unwrap_or_default()
            };
            let tmp = self.dir.join("index.json.tmp");
            tokio::fs::write(&tmp, index).await?;
            tokio::fs::rename(&tmp, self.dir.join("index.json")).await
        };
        write
            .await
            .map_err(|e| fail(format!("storing the image: {e}")))?;
        Ok(Loaded { bytes, digest })
    }
}

/// A registry client. Its TLS uses *ring*, the process's one crypto
/// provider (installed here unless the embedding program did first), so no
/// second provider is compiled in for oci-client.
pub(crate) fn registry_client(config: ClientConfig) -> oci_client::Client {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // a lost race means another thread installed one: fine either way
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    oci_client::Client::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_and_policies_parse() {
        assert_eq!(
            ImageRef::parse("file:///a/b.wasm"),
            ImageRef::File("/a/b.wasm".into())
        );
        assert_eq!(
            ImageRef::parse("ghcr.io/x/y:1"),
            ImageRef::Registry("ghcr.io/x/y:1".into())
        );
        assert_eq!(PullPolicy::parse("Always"), PullPolicy::Always);
        assert_eq!(PullPolicy::parse("Never"), PullPolicy::Never);
        assert_eq!(PullPolicy::parse("IfNotPresent"), PullPolicy::IfNotPresent);
        assert!(
            is_loopback("127.0.0.1:5000")
                && is_loopback("localhost:5000")
                && !is_loopback("ghcr.io")
        );
    }

    #[tokio::test]
    async fn never_pulls_fail_without_a_cached_image() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::new(dir.path().to_path_buf());
        match store
            .get("127.0.0.1:1/x/y:1", PullPolicy::Never, None)
            .await
        {
            Err(RuntimeError::NeverPull { .. }) => {}
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            store
                .get("127.0.0.1:1/x/y:1", PullPolicy::IfNotPresent, None)
                .await,
            Err(RuntimeError::Pull { .. })
        ));
        assert!(matches!(
            store
                .get("Not A Reference!", PullPolicy::Always, None)
                .await,
            Err(RuntimeError::Pull { .. })
        ));
    }
}
