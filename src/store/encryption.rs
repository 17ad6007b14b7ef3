//! Secrets encrypted at rest. A Secret is sealed with XChaCha20-Poly1305
//! before it enters the Raft log, and stays sealed in the state machine's
//! redb file and in snapshots; only the in-memory watch cache holds it in
//! the clear (as kube-apiserver's watch cache does). A sealed value is the
//! JSON string `k8s:enc:xchacha20poly1305:v1:<key name>:<base64(nonce ‖
//! ciphertext)>`, with the object's store key as associated data, so a
//! ciphertext cannot be moved to another object.
//!
//! The keys live in `DATA_DIR/cred/encryption-config.json` (mode 0600), in
//! kube-apiserver's `EncryptionConfiguration` shape; the first key seals,
//! all of them open.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use serde_json::{json, Value};

/// The provider name, as it appears in sealed values and the config.
pub const PROVIDER: &str = "xchacha20poly1305";
/// What every sealed value starts with.
pub const PREFIX: &str = "k8s:enc:xchacha20poly1305:v1:";

/// Errors of the keyring.
#[derive(Debug, thiserror::Error)]
pub enum EncryptionError {
    #[error("reading the encryption config {path}: {detail}")]
    Config { path: PathBuf, detail: String },
    #[error("writing the encryption config {path}: {detail}")]
    Write { path: PathBuf, detail: String },
    #[error("{key} is encrypted with key {name:?}, which is not in {path}: copy cred/encryption-config.json from the data directory the data came from")]
    MissingKey {
        key: String,
        name: String,
        path: PathBuf,
    },
    #[error("{key} cannot be decrypted: {detail}")]
    Corrupt { key: String, detail: String },
}

struct Key {
    name: String,
    cipher: XChaCha20Poly1305,
    secret: [u8; 32],
}

/// The encryption keys of one server.
pub struct Keyring {
    path: PathBuf,
    keys: RwLock<Vec<Key>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring").field("path", &self.path).finish()
    }
}

/// Whether objects under this store key are encrypted.
pub fn is_sealed_kind(key: &str) -> bool {
    key.starts_with("core/secrets/")
}

/// Whether a stored value is sealed.
pub fn is_sealed(v: &Value) -> bool {
    v.as_str().is_some_and(|s| s.starts_with(PREFIX))
}

/// The key name a sealed value was sealed with.
pub fn key_name(v: &Value) -> Option<&str> {
    v.as_str()?.strip_prefix(PREFIX)?.split(':').next()
}

fn new_key(name: String) -> Key {
    let secret: [u8; 32] = rand::random();
    key_from(name, secret)
}

fn key_from(name: String, secret: [u8; 32]) -> Key {
    Key {
        cipher: XChaCha20Poly1305::new(&secret.into()),
        name,
        secret,
    }
}

impl Keyring {
    /// Read the keys at `path`; `None` when there is no file.
    pub fn load(path: &Path) -> Result<Option<Self>, EncryptionError> {
        let err = |detail: String| EncryptionError::Config {
            path: path.into(),
            detail,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(err(e.to_string())),
        };
        let doc: Value = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        let mut keys = Vec::new();
        for r in doc["resources"].as_array().into_iter().flatten() {
            for p in r["providers"].as_array().into_iter().flatten() {
                for k in p[PROVIDER]["keys"].as_array().into_iter().flatten() {
                    let name = k["name"].as_str().unwrap_or_default().to_string();
                    let secret: [u8; 32] = B64
                        .decode(k["secret"].as_str().unwrap_or_default())
                        .ok()
                        .and_then(|b| b.try_into().ok())
                        .ok_or_else(|| err(format!("key {name:?} is not 32 bytes of base64")))?;
                    keys.push(key_from(name, secret));
                }
            }
        }
        if keys.is_empty() {
            return Err(err(format!("no {PROVIDER} key")));
        }
        Ok(Some(Self {
            path: path.into(),
            keys: RwLock::new(keys),
        }))
    }

    /// Read the keys at `path`, creating a first key on first start.
    pub fn load_or_create(path: &Path) -> Result<Self, EncryptionError> {
        if let Some(k) = Self::load(path)? {
            return Ok(k);
        }
        let ring = Self {
            path: path.into(),
            keys: RwLock::new(vec![new_key(format!(
                "key-{}",
                chrono::Utc::now().timestamp()
            ))]),
        };
        ring.save()?;
        Ok(ring)
    }

    fn save(&self) -> Result<(), EncryptionError> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let doc = json!({
            "kind": "EncryptionConfiguration",
            "apiVersion": "apiserver.config.k8s.io/v1",
            "resources": [{"resources": ["secrets"], "providers": [
                {PROVIDER: {"keys": keys.iter().map(|k| json!({"name": k.name, "secret": B64.encode(k.secret)})).collect::<Vec<_>>()}},
            ]}],
        });
        crate::tls::pki::write_private(
            &self.path,
            serde_json::to_string_pretty(&doc)
                .unwrap_or_default()
                .as_bytes(),
        )
        .map_err(|e| EncryptionError::Write {
            path: self.path.clone(),
            detail: e.to_string(),
        })
    }

    /// Where the keys are kept.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The sealing key's name, then the others.
    pub fn names(&self) -> Vec<String> {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|k| k.name.clone())
            .collect()
    }

    /// Seal `object` stored under `store_key`.
    pub fn seal(&self, store_key: &str, object: &Value) -> Value {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let k = &keys[0];
        let nonce: [u8; 24] = rand::random();
        let plain = serde_json::to_vec(object).unwrap_or_default();
        let sealed = k
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: store_key.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
        let mut out = nonce.to_vec();
        out.extend(sealed);
        Value::String(format!("{PREFIX}{}:{}", k.name, B64.encode(out)))
    }

    /// Open a sealed value stored under `store_key`.
    pub fn open(&self, store_key: &str, sealed: &Value) -> Result<Value, EncryptionError> {
        let corrupt = |detail: &str| EncryptionError::Corrupt {
            key: store_key.into(),
            detail: detail.into(),
        };
        let rest = sealed
            .as_str()
            .and_then(|s| s.strip_prefix(PREFIX))
            .ok_or_else(|| corrupt("not a sealed value"))?;
        let (name, data) = rest.split_once(':').ok_or_else(|| corrupt("no key name"))?;
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let k =
            keys.iter()
                .find(|k| k.name == name)
                .ok_or_else(|| EncryptionError::MissingKey {
                    key: store_key.into(),
                    name: name.into(),
                    path: self.path.clone(),
                })?;
        let bytes = B64.decode(data).map_err(|_| corrupt("not base64"))?;
        if bytes.len() < 24 {
            return Err(corrupt("too short"));
        }
        let (nonce, ct) = bytes.split_at(24);
        let plain = k
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: store_key.as_bytes(),
                },
            )
            .map_err(|_| {
                corrupt("authentication failed (tampered, or sealed for another object)")
            })?;
        serde_json::from_slice(&plain).map_err(|e| corrupt(&e.to_string()))
    }

    /// The stored form of `object` under `key`: sealed if its kind is,
    /// else `object` itself (not copied).
    pub fn to_stored<'a>(&self, key: &str, object: &'a Value) -> Cow<'a, Value> {
        if is_sealed_kind(key) && !is_sealed(object) {
            Cow::Owned(self.seal(key, object))
        } else {
            Cow::Borrowed(object)
        }
    }

    /// [`Keyring::to_stored`] of an object the caller gives up.
    pub fn into_stored(&self, key: &str, object: Value) -> Value {
        if let Cow::Owned(sealed) = self.to_stored(key, &object) {
            return sealed;
        }
        object
    }

    /// The clear form of a stored value.
    pub fn from_stored(&self, key: &str, stored: Value) -> Result<Value, EncryptionError> {
        if is_sealed(&stored) {
            self.open(key, &stored)
        } else {
            Ok(stored)
        }
    }

    /// Make a new key the sealing key (the old ones still open); returns its name.
    pub fn rotate(&self) -> Result<String, EncryptionError> {
        let name = format!("key-{}", chrono::Utc::now().timestamp_millis());
        self.keys
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(0, new_key(name.clone()));
        self.save()?;
        Ok(name)
    }

    /// Forget every key but the sealing one (once nothing uses them).
    pub fn retire_old(&self) -> Result<(), EncryptionError> {
        self.keys
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .truncate(1);
        self.save()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_their_key_and_object() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cred/encryption-config.json");
        let ring = Keyring::load_or_create(&path).unwrap();
        let secret = json!({"kind": "Secret", "data": {"password": "aHVudGVyMg=="}});
        let sealed = ring.to_stored("core/secrets/d/db", &secret).into_owned();
        assert!(is_sealed(&sealed));
        assert!(!sealed.to_string().contains("aHVudGVyMg"), "{sealed}");
        assert_eq!(
            ring.from_stored("core/secrets/d/db", sealed.clone())
                .unwrap(),
            secret
        );
        // moved to another object: refused
        assert!(ring.open("core/secrets/d/other", &sealed).is_err());
        // other kinds stay as they are
        let cm = json!({"kind": "ConfigMap"});
        assert_eq!(*ring.to_stored("core/configmaps/d/x", &cm), cm);
        // the key file is private and reloads
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = Keyring::load(&path).unwrap().unwrap();
        assert_eq!(again.open("core/secrets/d/db", &sealed).unwrap(), secret);
        // after a rotation old values still open, new ones use the new key
        let new = ring.rotate().unwrap();
        assert_eq!(ring.open("core/secrets/d/db", &sealed).unwrap(), secret);
        let resealed = ring.seal("core/secrets/d/db", &secret);
        assert_eq!(key_name(&resealed), Some(new.as_str()));
        ring.retire_old().unwrap();
        let e = ring.open("core/secrets/d/db", &sealed).unwrap_err();
        assert!(matches!(e, EncryptionError::MissingKey { .. }), "{e}");
        // another data directory's keys cannot open it
        let other = Keyring::load_or_create(&dir.path().join("other.json")).unwrap();
        assert!(other.open("core/secrets/d/db", &resealed).is_err());
    }
}
