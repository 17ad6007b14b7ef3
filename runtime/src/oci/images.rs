//! OCI images for the runc runtime: pulled from any OCI or Docker v2
//! registry (index and platform selection, digests verified, layers
//! streamed to disk), or imported from docker-archive and OCI-layout
//! tarballs with no registry at all.
//!
//! Each layer is unpacked once into a content-addressed directory, with
//! whiteouts turned into overlayfs whiteouts (character devices 0:0) and
//! opaque directories marked `trusted.overlay.opaque=y`, so a container's
//! root is an overlay of shared read-only layers under its own upper dir.
//!
//! Layout under the store's directory:
//! - `blobs/sha256-<hex>`: manifests and configs;
//! - `layers/sha256-<hex>`: unpacked layers, named by their blob digest;
//! - `refs.json`: image reference → manifest digest.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::image::{is_loopback, Credentials, PullPolicy, WASM_MEDIA_TYPES};
use crate::RuntimeError;

/// What an image holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    /// A Wasm artifact (an `application/wasm` layer): the Wasm runtime runs it.
    Wasm,
    /// A Linux container image: the OCI runtime runs it.
    Linux,
}

/// How a container image asks to be run (the parts of the OCI image
/// config the runtime uses).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunConfig {
    #[serde(default, rename = "Env")]
    pub env: Option<Vec<String>>,
    #[serde(default, rename = "Entrypoint")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, rename = "Cmd")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, rename = "WorkingDir")]
    pub working_dir: Option<String>,
    #[serde(default, rename = "User")]
    pub user: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    config: Option<RunConfig>,
    #[serde(default)]
    architecture: Option<String>,
}

/// A Linux image ready to run.
#[derive(Debug, Clone)]
pub struct Image {
    /// `sha256:` digest of its config (the kubelet's `imageID`).
    pub id: String,
    pub config: RunConfig,
    /// Unpacked layers, bottom first.
    pub layers: Vec<PathBuf>,
}

/// What the store keeps per image (`blobs/<manifest digest>`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    kind: String,
    config_digest: String,
    config: RunConfig,
    layers: Vec<String>,
}

/// Pulled and imported images.
pub struct ImageStore {
    dir: PathBuf,
    refs: Mutex<BTreeMap<String, String>>,
    extra_roots: Vec<Vec<u8>>,
    /// One lock per layer being fetched: pulls of images sharing a layer
    /// (two replicas starting at once) fetch and unpack it once.
    layer_locks: Mutex<BTreeMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
}

/// A name no other download, unpack or write of this process uses.
fn unique() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "{}.{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

fn fail(image: &str, reason: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Pull {
        image: image.into(),
        reason: reason.to_string(),
    }
}

/// `sha256:<hex>` → a file name.
fn file_name(digest: &str) -> String {
    digest.replace(':', "-")
}

/// The kind an image's manifest shows.
pub fn kind_of(config_media_type: &str, layers: &[&str]) -> ImageKind {
    if layers.iter().any(|m| WASM_MEDIA_TYPES.contains(m)) || config_media_type.contains("wasm") {
        ImageKind::Wasm
    } else {
        ImageKind::Linux
    }
}

fn manifest_kind(manifest: &OciImageManifest) -> ImageKind {
    let layers: Vec<&str> = manifest
        .layers
        .iter()
        .map(|l| l.media_type.as_str())
        .collect();
    kind_of(&manifest.config.media_type, &layers)
}

/// The normalised form of a reference (`busybox` → `docker.io/library/busybox:latest`).
pub fn normalise(image: &str) -> Result<String, RuntimeError> {
    let r: Reference = image
        .parse()
        .map_err(|e| fail(image, format!("invalid image reference: {e}")))?;
    Ok(r.whole())
}

impl ImageStore {
    /// A store under `dir`; `extra_roots` are DER certificates trusted for registries.
    pub fn new(dir: PathBuf, extra_roots: Vec<Vec<u8>>) -> Self {
        let refs = std::fs::read(dir.join("refs.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Self {
            dir,
            refs: Mutex::new(refs),
            extra_roots,
            layer_locks: Mutex::new(BTreeMap::new()),
        }
    }

    fn blob(&self, digest: &str) -> PathBuf {
        self.dir.join("blobs").join(file_name(digest))
    }

    fn layer_dir(&self, digest: &str) -> PathBuf {
        self.dir.join("layers").join(file_name(digest))
    }

    /// The manifest digest a reference names, as this store knows it.
    fn known_digest(&self, reference: &str) -> Option<String> {
        self.refs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(reference)
            .cloned()
    }

    fn record(&self, reference: &str) -> Option<Record> {
        let digest = match self.known_digest(reference) {
            Some(d) => d,
            // imported by `wk image import` since this store read its refs
            None => {
                let on_disk: BTreeMap<String, String> =
                    serde_json::from_slice(&std::fs::read(self.dir.join("refs.json")).ok()?)
                        .ok()?;
                let d = on_disk.get(reference).cloned()?;
                let mut refs = self.refs.lock().unwrap_or_else(|e| e.into_inner());
                for (k, v) in on_disk {
                    refs.entry(k).or_insert(v);
                }
                d
            }
        };
        let rec: Record = serde_json::from_slice(&std::fs::read(self.blob(&digest)).ok()?).ok()?;
        let complete = rec.kind == "wasm" || rec.layers.iter().all(|l| self.layer_dir(l).is_dir());
        complete.then_some(rec)
    }

    /// References of the images held, with their ids.
    pub fn list(&self) -> Vec<(String, String)> {
        let refs = self.refs.lock().unwrap_or_else(|e| e.into_inner()).clone();
        refs.into_keys()
            .filter_map(|r| self.record(&r).map(|rec| (r, rec.config_digest)))
            .collect()
    }

    fn save_ref(&self, reference: &str, manifest_digest: &str) -> std::io::Result<()> {
        let bytes = {
            let mut refs = self.refs.lock().unwrap_or_else(|e| e.into_inner());
            refs.insert(reference.to_string(), manifest_digest.to_string());
            serde_json::to_vec_pretty(&*refs).unwrap_or_default()
        };
        write_atomic(&self.dir.join("refs.json"), &bytes)
    }

    fn client(&self, reference: &Reference) -> oci_client::Client {
        let protocol = if is_loopback(reference.resolve_registry()) {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        crate::image::registry_client(ClientConfig {
            protocol,
            extra_root_certificates: self
                .extra_roots
                .iter()
                .map(|der| oci_client::client::Certificate {
                    encoding: oci_client::client::CertificateEncoding::Der,
                    data: der.clone(),
                })
                .collect(),
            ..Default::default()
        })
    }

    /// What `image` is, pulling its manifest if the store does not know it
    /// (by `policy`).
    pub async fn kind(
        &self,
        image: &str,
        policy: PullPolicy,
        credentials: Option<&Credentials>,
    ) -> Result<ImageKind, RuntimeError> {
        let key = normalise(image)?;
        if policy != PullPolicy::Always {
            if let Some(rec) = self.record(&key) {
                return Ok(if rec.kind == "wasm" {
                    ImageKind::Wasm
                } else {
                    ImageKind::Linux
                });
            }
        }
        if policy == PullPolicy::Never {
            return Err(RuntimeError::NeverPull {
                image: image.into(),
            });
        }
        let reference: Reference = key.parse().map_err(|e| fail(image, e))?;
        let client = self.client(&reference);
        let (manifest, _, _) = client
            .pull_manifest_and_config(&reference, &auth(credentials))
            .await
            .map_err(|e| fail(image, e))?;
        Ok(manifest_kind(&manifest))
    }

    /// A Linux image, pulled according to `policy`.
    pub async fn get(
        &self,
        image: &str,
        policy: PullPolicy,
        credentials: Option<&Credentials>,
    ) -> Result<Image, RuntimeError> {
        let key = normalise(image)?;
        if policy != PullPolicy::Always {
            if let Some(rec) = self.record(&key) {
                self.touch(&key);
                return self.image(image, rec);
            }
        }
        if policy == PullPolicy::Never {
            return Err(RuntimeError::NeverPull {
                image: image.into(),
            });
        }
        let rec = self.pull(image, &key, credentials).await?;
        self.touch(&key);
        self.image(image, rec)
    }

    /// Mark an image used now (its manifest record's modification time),
    /// for garbage collection's least-recently-used order.
    fn touch(&self, key: &str) {
        if let Some(d) = self.known_digest(key) {
            if let Ok(f) = std::fs::File::options().write(true).open(self.blob(&d)) {
                let _ = f.set_modified(std::time::SystemTime::now());
            }
        }
    }

    /// Collect garbage: if the store's filesystem is at least `high` percent
    /// full, remove images not in `in_use` (references as pods give them),
    /// least recently used first, with the layers no remaining image holds,
    /// until it is down to `low` percent. Returns the references removed.
    pub fn gc(&self, in_use: &[String], high: u8, low: u8) -> std::io::Result<Vec<String>> {
        let disk = match disk_usage(&self.dir) {
            // nothing pulled yet: the store's directory comes with its first image
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            d => d?,
        };
        if disk.total == 0 || disk.used * 100 < disk.total * u64::from(high) {
            return Ok(Vec::new());
        }
        let in_use: std::collections::BTreeSet<String> =
            in_use.iter().filter_map(|r| normalise(r).ok()).collect();
        let refs = self.refs.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut images = Vec::new();
        let mut sizes = BTreeMap::new();
        for (reference, digest) in &refs {
            let Some(rec) = self.record(reference) else {
                continue;
            };
            let last_used = std::fs::metadata(self.blob(digest))
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            for l in &rec.layers {
                sizes
                    .entry(l.clone())
                    .or_insert_with(|| dir_bytes(&self.layer_dir(l)));
            }
            images.push(super::gc::Candidate {
                reference: reference.clone(),
                layers: rec.layers,
                last_used,
            });
        }
        let victims = super::gc::plan(&images, &in_use, &sizes, disk, high, low);
        if victims.is_empty() {
            return Ok(victims);
        }
        // forget the references first: a container created from now on
        // pulls again rather than finding half an image
        let remaining: BTreeMap<String, String> = {
            let mut r = self.refs.lock().unwrap_or_else(|e| e.into_inner());
            for v in &victims {
                r.remove(v);
            }
            r.clone()
        };
        write_atomic(
            &self.dir.join("refs.json"),
            &serde_json::to_vec_pretty(&remaining).unwrap_or_default(),
        )?;
        let kept_layers: std::collections::BTreeSet<String> = images
            .iter()
            .filter(|i| !victims.contains(&i.reference))
            .flat_map(|i| i.layers.clone())
            .collect();
        let kept_digests: std::collections::BTreeSet<&String> = remaining.values().collect();
        for i in images.iter().filter(|i| victims.contains(&i.reference)) {
            if let Some(d) = refs.get(&i.reference).filter(|d| !kept_digests.contains(d)) {
                let _ = std::fs::remove_file(self.blob(d));
            }
            for l in i.layers.iter().filter(|l| !kept_layers.contains(*l)) {
                // a pull of this layer under way keeps it
                let busy = self
                    .layer_locks
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains_key(l);
                if !busy {
                    let _ = std::fs::remove_dir_all(self.layer_dir(l));
                }
            }
        }
        Ok(victims)
    }

    fn image(&self, image: &str, rec: Record) -> Result<Image, RuntimeError> {
        if rec.kind == "wasm" {
            return Err(fail(
                image,
                "the image is a Wasm artifact, not a Linux image",
            ));
        }
        Ok(Image {
            id: rec.config_digest,
            config: rec.config,
            layers: rec.layers.iter().map(|l| self.layer_dir(l)).collect(),
        })
    }

    async fn pull(
        &self,
        image: &str,
        key: &str,
        credentials: Option<&Credentials>,
    ) -> Result<Record, RuntimeError> {
        let reference: Reference = key.parse().map_err(|e| fail(image, e))?;
        let client = self.client(&reference);
        let (manifest, manifest_digest, config) = client
            .pull_manifest_and_config(&reference, &auth(credentials))
            .await
            .map_err(|e| fail(image, e))?;
        if manifest_kind(&manifest) == ImageKind::Wasm {
            return Err(fail(
                image,
                "the image is a Wasm artifact, not a Linux image",
            ));
        }
        let parsed: ConfigFile = serde_json::from_str(&config)
            .map_err(|e| fail(image, format!("the image config is not valid JSON: {e}")))?;
        if let Some(arch) = &parsed.architecture {
            if arch != host_arch() {
                return Err(fail(
                    image,
                    format!("the image is for {arch}, this node is {}", host_arch()),
                ));
            }
        }
        for layer in &manifest.layers {
            self.fetch_layer(image, &client, &reference, layer).await?;
        }
        let rec = record(&manifest, parsed);
        self.store(image, key, &manifest_digest, &rec)?;
        Ok(rec)
    }

    fn store(
        &self,
        image: &str,
        key: &str,
        manifest_digest: &str,
        rec: &Record,
    ) -> Result<(), RuntimeError> {
        let bytes = serde_json::to_vec(rec).unwrap_or_default();
        std::fs::create_dir_all(self.dir.join("blobs"))
            .and_then(|_| write_atomic(&self.blob(manifest_digest), &bytes))
            .and_then(|_| self.save_ref(key, manifest_digest))
            .map_err(|e| fail(image, format!("storing the image: {e}")))
    }

    /// Download one layer to a file (digest verified by the client as it
    /// streams), then unpack it once.
    async fn fetch_layer(
        &self,
        image: &str,
        client: &oci_client::Client,
        reference: &Reference,
        layer: &OciDescriptor,
    ) -> Result<(), RuntimeError> {
        self.once_per_layer(
            &layer.digest,
            self.download_and_unpack(image, client, reference, layer),
        )
        .await
    }

    /// Run `make` (which fills `layers/<digest>`) unless the layer is there,
    /// once at a time per digest: a second pull or import of the layer waits
    /// for the first and then finds it.
    async fn once_per_layer(
        &self,
        digest: &str,
        make: impl std::future::Future<Output = Result<(), RuntimeError>>,
    ) -> Result<(), RuntimeError> {
        if self.layer_dir(digest).is_dir() {
            return Ok(());
        }
        let lock = self.layer_lock(digest);
        let made = {
            let _held = lock.lock().await;
            if self.layer_dir(digest).is_dir() {
                Ok(())
            } else {
                make.await
            }
        };
        self.layer_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(digest);
        made
    }

    fn layer_lock(&self, digest: &str) -> std::sync::Arc<tokio::sync::Mutex<()>> {
        self.layer_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(digest.to_string())
            .or_default()
            .clone()
    }

    async fn download_and_unpack(
        &self,
        image: &str,
        client: &oci_client::Client,
        reference: &Reference,
        layer: &OciDescriptor,
    ) -> Result<(), RuntimeError> {
        let tmp_dir = self.dir.join("tmp");
        tokio::fs::create_dir_all(&tmp_dir)
            .await
            .map_err(|e| fail(image, format!("{}: {e}", tmp_dir.display())))?;
        let download = tmp_dir.join(format!("{}.{}", file_name(&layer.digest), unique()));
        let file = tokio::fs::File::create(&download)
            .await
            .map_err(|e| fail(image, format!("{}: {e}", download.display())))?;
        let mut out = tokio::io::BufWriter::new(file);
        let pulled = client.pull_blob(reference, layer, &mut out).await;
        let flushed = tokio::io::AsyncWriteExt::flush(&mut out).await;
        drop(out);
        if let Err(e) = pulled {
            let _ = tokio::fs::remove_file(&download).await;
            return Err(fail(image, format!("layer {}: {e}", layer.digest)));
        }
        flushed.map_err(|e| fail(image, e))?;
        let unpacked = self.unpack_file(&download, &layer.digest).await;
        let _ = tokio::fs::remove_file(&download).await;
        unpacked.map_err(|e| fail(image, format!("unpacking layer {}: {e}", layer.digest)))
    }

    /// Unpack a layer file (plain, gzip or zstd tar) into `layers/<digest>`.
    async fn unpack_file(&self, file: &Path, digest: &str) -> std::io::Result<()> {
        let dest = self.layer_dir(digest);
        let tmp = self
            .dir
            .join("tmp")
            .join(format!("{}.unpack.{}", file_name(digest), unique()));
        let file = file.to_path_buf();
        let tmp2 = tmp.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let _ = std::fs::remove_dir_all(&tmp2);
            std::fs::create_dir_all(&tmp2)?;
            let f = std::fs::File::open(&file)?;
            unpack_layer(decompress(std::io::BufReader::new(f))?, &tmp2)
        })
        .await
        .map_err(std::io::Error::other)??;
        tokio::fs::create_dir_all(self.dir.join("layers")).await?;
        match tokio::fs::rename(&tmp, &dest).await {
            Ok(()) => Ok(()),
            // another pull of the same layer finished first
            Err(_) if dest.is_dir() => {
                let _ = tokio::fs::remove_dir_all(&tmp).await;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Import a docker-archive (`docker save`) or OCI-layout tarball; returns
    /// the references it named.
    pub async fn import(&self, tarball: &Path) -> Result<Vec<String>, RuntimeError> {
        let name = tarball.display().to_string();
        let scratch = self.dir.join("tmp").join(format!("import.{}", unique()));
        let src = tarball.to_path_buf();
        let dir = scratch.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            let f = std::fs::File::open(&src)?;
            let mut a = tar::Archive::new(decompress(std::io::BufReader::new(f))?);
            a.unpack(&dir)
        })
        .await
        .map_err(|e| fail(&name, e))?
        .map_err(|e| fail(&name, format!("reading the archive: {e}")))?;
        let result = self.import_dir(&name, &scratch).await;
        let _ = tokio::fs::remove_dir_all(&scratch).await;
        result
    }

    async fn import_dir(&self, name: &str, dir: &Path) -> Result<Vec<String>, RuntimeError> {
        let read =
            |p: PathBuf| std::fs::read(&p).map_err(|e| fail(name, format!("{}: {e}", p.display())));
        let mut imported = Vec::new();
        if dir.join("index.json").exists() {
            // OCI layout
            let index: serde_json::Value = serde_json::from_slice(&read(dir.join("index.json"))?)
                .map_err(|e| fail(name, format!("index.json: {e}")))?;
            let blob = |d: &str| dir.join("blobs").join(d.replacen(':', "/", 1));
            for m in index["manifests"].as_array().into_iter().flatten() {
                let digest = m["digest"].as_str().unwrap_or_default();
                let reference = m["annotations"]["io.containerd.image.name"]
                    .as_str()
                    .or(m["annotations"]["org.opencontainers.image.ref.name"].as_str())
                    .ok_or_else(|| fail(name, format!("manifest {digest} names no image")))?;
                let mut manifest: serde_json::Value =
                    serde_json::from_slice(&read(blob(digest))?).map_err(|e| fail(name, e))?;
                let mut manifest_digest = digest.to_string();
                if let Some(list) = manifest["manifests"].as_array().cloned() {
                    // an index: take this platform's manifest
                    let pick = list
                        .iter()
                        .find(|e| {
                            e["platform"]["architecture"].as_str() == Some(host_arch())
                                && e["platform"]["os"].as_str() == Some("linux")
                        })
                        .or(list.first())
                        .ok_or_else(|| fail(name, "empty image index"))?;
                    manifest_digest = pick["digest"].as_str().unwrap_or_default().to_string();
                    manifest = serde_json::from_slice(&read(blob(&manifest_digest))?)
                        .map_err(|e| fail(name, e))?;
                }
                let manifest: OciImageManifest =
                    serde_json::from_value(manifest).map_err(|e| fail(name, e))?;
                let config =
                    String::from_utf8_lossy(&read(blob(&manifest.config.digest))?).into_owned();
                let mut layers = Vec::new();
                for l in &manifest.layers {
                    self.import_layer(name, &blob(&l.digest), &l.digest).await?;
                    layers.push(l.digest.clone());
                }
                let key = normalise(reference)?;
                let rec = record(&manifest, serde_json::from_str(&config).unwrap_or_default());
                self.store(name, &key, &manifest_digest, &rec)?;
                imported.push(key);
            }
        } else if dir.join("manifest.json").exists() {
            // docker-archive
            let entries: Vec<serde_json::Value> =
                serde_json::from_slice(&read(dir.join("manifest.json"))?)
                    .map_err(|e| fail(name, format!("manifest.json: {e}")))?;
            for e in entries {
                let config_path = e["Config"].as_str().unwrap_or_default();
                let config_bytes = read(dir.join(config_path))?;
                let config_digest =
                    format!("sha256:{}", hex::encode(Sha256::digest(&config_bytes)));
                let config = String::from_utf8_lossy(&config_bytes).into_owned();
                let mut layers = Vec::new();
                for l in e["Layers"].as_array().into_iter().flatten() {
                    let path = dir.join(l.as_str().unwrap_or_default());
                    let digest = file_digest(&path).map_err(|e| fail(name, e))?;
                    self.import_layer(name, &path, &digest).await?;
                    layers.push(digest);
                }
                let parsed: ConfigFile = serde_json::from_str(&config).unwrap_or_default();
                let rec = Record {
                    kind: "linux".into(),
                    config_digest: config_digest.clone(),
                    config: parsed.config.unwrap_or_default(),
                    layers,
                };
                let tags: Vec<String> = e["RepoTags"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t.as_str().map(String::from))
                    .collect();
                if tags.is_empty() {
                    return Err(fail(name, format!("image {config_digest} has no RepoTags")));
                }
                for t in tags {
                    let key = normalise(&t)?;
                    self.store(name, &key, &config_digest, &rec)?;
                    imported.push(key);
                }
            }
        } else {
            return Err(fail(
                name,
                "neither an OCI layout (index.json) nor a docker archive (manifest.json)",
            ));
        }
        Ok(imported)
    }

    async fn import_layer(
        &self,
        name: &str,
        file: &Path,
        digest: &str,
    ) -> Result<(), RuntimeError> {
        self.once_per_layer(digest, async {
            let actual = file_digest(file).map_err(|e| fail(name, e))?;
            if actual != digest {
                return Err(fail(
                    name,
                    format!(
                        "layer {} has digest {actual}, expected {digest}",
                        file.display()
                    ),
                ));
            }
            self.unpack_file(file, digest)
                .await
                .map_err(|e| fail(name, format!("unpacking layer {digest}: {e}")))
        })
        .await
    }
}

fn record(manifest: &OciImageManifest, parsed: ConfigFile) -> Record {
    Record {
        kind: "linux".into(),
        config_digest: manifest.config.digest.clone(),
        config: parsed.config.unwrap_or_default(),
        layers: manifest.layers.iter().map(|l| l.digest.clone()).collect(),
    }
}

fn auth(credentials: Option<&Credentials>) -> RegistryAuth {
    match credentials {
        Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
        None => RegistryAuth::Anonymous,
    }
}

/// The OCI name of this machine's architecture.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Used and total bytes of the filesystem holding `dir`.
fn disk_usage(dir: &Path) -> std::io::Result<super::gc::Disk> {
    let p = cpath(dir)?;
    // SAFETY: a zeroed statvfs is a valid value for statvfs(3) to fill.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out pointer.
    if unsafe { libc::statvfs(p.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let block = st.f_frsize as u64;
    let total = st.f_blocks as u64 * block;
    let free = st.f_bfree as u64 * block;
    Ok(super::gc::Disk {
        used: total.saturating_sub(free),
        total,
    })
}

/// Bytes of the files under `dir` (not following links).
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

fn file_digest(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp.{}", unique()));
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// A reader of a plain, gzip or zstd stream, told apart by magic bytes.
fn decompress<R: std::io::BufRead + Send + 'static>(
    mut r: R,
) -> std::io::Result<Box<dyn Read + Send>> {
    let head = r.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(r)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(r)?))
    } else {
        Ok(Box::new(r))
    }
}

/// Unpack one layer tar into `dest`, turning OCI whiteouts into overlayfs ones.
pub fn unpack_layer(r: impl Read, dest: &Path) -> std::io::Result<()> {
    let mut a = tar::Archive::new(r);
    a.set_preserve_permissions(true);
    a.set_preserve_ownerships(true);
    a.set_preserve_mtime(true);
    a.set_unpack_xattrs(true);
    a.set_overwrite(true);
    for entry in a.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
            entry.unpack_in(dest)?;
            continue;
        };
        if let Some(hidden) = file.strip_prefix(".wh.") {
            let parent = path.parent().unwrap_or(Path::new(""));
            if parent
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(std::io::Error::other(format!(
                    "whiteout {} leaves the layer",
                    path.display()
                )));
            }
            let dir = dest.join(parent);
            std::fs::create_dir_all(&dir)?;
            if hidden == ".wh..opq" {
                set_xattr(&dir, "trusted.overlay.opaque", b"y")?;
            } else {
                mknod_whiteout(&dir.join(hidden))?;
            }
            continue;
        }
        entry.unpack_in(dest)?;
    }
    Ok(())
}

fn cpath(p: &Path) -> std::io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other)
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let path = cpath(p)?;
    let name = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
    // SAFETY: both strings are NUL-terminated and the value slice is valid.
    let rc = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn mknod_whiteout(p: &Path) -> std::io::Result<()> {
    let _ = std::fs::remove_file(p);
    let _ = std::fs::remove_dir_all(p);
    let path = cpath(p)?;
    // SAFETY: a NUL-terminated path; a character device 0:0 is overlayfs' whiteout.
    let rc = unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR, libc::makedev(0, 0)) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o1777);
        h.set_size(0);
        b.append_data(&mut h, "tmp", &[][..]).unwrap();
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, path, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn a_store_with_nothing_pulled_has_no_garbage() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ImageStore::new(tmp.path().join("images"), Vec::new());
        // 0% high water: collect whatever there is, and there is nothing
        assert_eq!(store.gc(&[], 0, 0).unwrap(), Vec::<String>::new());
        assert!(!tmp.path().join("images").exists());
    }

    #[test]
    fn kinds_come_from_the_manifest() {
        assert_eq!(
            kind_of(
                "application/vnd.oci.image.config.v1+json",
                &["application/vnd.oci.image.layer.v1.tar+gzip"]
            ),
            ImageKind::Linux
        );
        assert_eq!(
            kind_of("application/vnd.wasm.config.v0+json", &["application/wasm"]),
            ImageKind::Wasm
        );
        assert_eq!(
            normalise("busybox").unwrap(),
            "docker.io/library/busybox:latest"
        );
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        let layer = tar_of(&[
            ("etc/keep", b"1"),
            ("etc/.wh.gone", b""),
            ("var/.wh..wh..opq", b""),
        ]);
        unpack_layer(&layer[..], dir.path()).unwrap();
        assert_eq!(std::fs::read(dir.path().join("etc/keep")).unwrap(), b"1");
        assert!(dir.path().join("tmp").is_dir());
        let gone = std::fs::symlink_metadata(dir.path().join("etc/gone")).unwrap();
        use std::os::unix::fs::FileTypeExt;
        assert!(gone.file_type().is_char_device());
        assert!(dir.path().join("var").is_dir());
        // a whiteout outside the layer (the tar builder refuses to write one)
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..8].copy_from_slice(b"../.wh.x");
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(0);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
        let evil = b.into_inner().unwrap();
        assert!(unpack_layer(&evil[..], dir.path()).is_err());
    }

    #[test]
    fn compressed_layers_are_recognised() {
        let layer = tar_of(&[("a", b"hello")]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &layer).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&layer[..], 1).unwrap();
        for bytes in [layer.clone(), gz, zst] {
            let dir = tempfile::tempdir().unwrap();
            let r = decompress(std::io::Cursor::new(bytes)).unwrap();
            unpack_layer(r, dir.path()).unwrap();
            assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"hello");
        }
    }
}
