//! Image references and loading module bytes for them.

use std::path::PathBuf;

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
pub async fn load_file(image: &str, path: &PathBuf) -> Result<Loaded, RuntimeError> {
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
