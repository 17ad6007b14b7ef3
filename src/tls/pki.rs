//! The cluster's certificate authorities and the certificates they issue,
//! kept as PEM files in a data directory (keys mode 0600).
//!
//! As in k3s there are two CAs: the **server CA** signs serving
//! certificates (API servers, agents' kubelet API), and the **client CA**
//! signs client certificates (admin, nodes, the API server's own client
//! identity towards agents and Raft peers). A client trusts the server CA;
//! a server accepts client certificates from the client CA. Certificates
//! are ECDSA P-256 (rcgen over ring); subjects are read with x509-parser.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

/// How long a CA is valid (k3s: 10 years).
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a leaf certificate is valid (k3s: one year).
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Leaf certificates this close to expiry are renewed at start (k3s: 90 days).
pub const RENEW_BEFORE: Duration = Duration::from_secs(90 * 24 * 3600);

/// Errors creating, reading or issuing certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a usable certificate or key: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the certificate signing request is invalid: {0}")]
    BadRequest(String),
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
}

/// The subject and names of a leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafSpec {
    pub common_name: String,
    pub organizations: Vec<String>,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub usage: Usage,
}

impl LeafSpec {
    /// A client certificate for `user` in `groups` (CN and O, as Kubernetes reads them).
    pub fn client(user: &str, groups: &[&str]) -> Self {
        Self {
            common_name: user.to_string(),
            organizations: groups.iter().map(|g| g.to_string()).collect(),
            dns_names: Vec::new(),
            ips: Vec::new(),
            usage: Usage::Client,
        }
    }

    /// A serving certificate for these names and addresses.
    pub fn server(common_name: &str, dns_names: Vec<String>, ips: Vec<IpAddr>) -> Self {
        Self {
            common_name: common_name.to_string(),
            organizations: Vec::new(),
            dns_names,
            ips,
            usage: Usage::Server,
        }
    }

    fn params(&self, validity: Duration) -> Result<CertificateParams, PkiError> {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        for o in &self.organizations {
            dn.push(DnType::OrganizationName, o.as_str());
        }
        dn.push(DnType::CommonName, self.common_name.as_str());
        p.distinguished_name = dn;
        for d in &self.dns_names {
            p.subject_alt_names.push(SanType::DnsName(
                d.clone()
                    .try_into()
                    .map_err(|e| PkiError::BadRequest(format!("DNS name {d:?}: {e}")))?,
            ));
        }
        for ip in &self.ips {
            p.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![match self.usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        set_validity(&mut p, validity);
        p.serial_number = Some(random_serial());
        p.use_authority_key_identifier_extension = true;
        Ok(p)
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn set_validity(p: &mut CertificateParams, validity: Duration) {
    let now = time::OffsetDateTime::now_utc();
    // a little slack for clocks that are behind
    p.not_before = now - time::Duration::minutes(5);
    p.not_after = now + time::Duration::seconds(validity.as_secs() as i64);
}

/// A PEM certificate and its PEM (PKCS#8) private key.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPairPem {
    pub cert: String,
    pub key: String,
}

impl std::fmt::Debug for KeyPairPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPairPem").finish_non_exhaustive()
    }
}

/// A certificate authority loaded from (or created in) a directory.
pub struct Ca {
    /// The CA certificate as stored (what clients trust).
    pub cert_pem: String,
    key: KeyPair,
    /// The CA's parameters re-signed in memory: rcgen's handle for issuing.
    issuer: rcgen::Certificate,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// Load `dir/NAME.crt` and `dir/NAME.key`, or create a new CA named
    /// `common_name` there on first start.
    pub fn load_or_create(dir: &Path, name: &str, common_name: &str) -> Result<Self, PkiError> {
        let cert_path = dir.join(format!("{name}.crt"));
        let key_path = dir.join(format!("{name}.key"));
        if cert_path.exists() && key_path.exists() {
            let cert_pem = read(&cert_path)?;
            let key_pem = read(&key_path)?;
            return Self::from_pem(&cert_pem, &key_pem).map_err(|detail| PkiError::Parse {
                path: cert_path,
                detail,
            });
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        let now = chrono::Utc::now().timestamp();
        dn.push(DnType::CommonName, format!("{common_name}@{now}"));
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.serial_number = Some(random_serial());
        set_validity(&mut p, CA_VALIDITY);
        let cert = p.self_signed(&key)?;
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        write_public(&cert_path, cert.pem().as_bytes())?;
        Self::from_pem(&cert.pem(), &key.serialize_pem()).map_err(|detail| PkiError::Parse {
            path: cert_path,
            detail,
        })
    }

    fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, String> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| format!("key: {e}"))?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem).map_err(|e| e.to_string())?;
        let issuer = params.self_signed(&key).map_err(|e| e.to_string())?;
        Ok(Self {
            cert_pem: cert_pem.to_string(),
            key,
            issuer,
        })
    }

    /// Issue a new key and certificate for `spec`.
    pub fn issue(&self, spec: &LeafSpec, validity: Duration) -> Result<KeyPairPem, PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = spec
            .params(validity)?
            .signed_by(&key, &self.issuer, &self.key)?;
        Ok(KeyPairPem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }

    /// Sign the public key of a PEM certificate signing request, with the
    /// subject and names of `spec` (whatever the request asked for).
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        spec: &LeafSpec,
        validity: Duration,
    ) -> Result<String, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::BadRequest(e.to_string()))?;
        let req = CertificateSigningRequestParams {
            params: spec.params(validity)?,
            public_key: csr.public_key,
        };
        Ok(req.signed_by(&self.issuer, &self.key)?.pem())
    }

    /// Load `dir/NAME.crt` and `.key` if they exist, were issued by this CA,
    /// match `spec` and are not close to expiry; otherwise issue and write
    /// a new pair.
    pub fn ensure_leaf(
        &self,
        dir: &Path,
        name: &str,
        spec: &LeafSpec,
    ) -> Result<KeyPairPem, PkiError> {
        let cert_path = dir.join(format!("{name}.crt"));
        let key_path = dir.join(format!("{name}.key"));
        if let (Ok(cert), Ok(key)) = (read(&cert_path), read(&key_path)) {
            if self.still_good(&cert, spec) {
                return Ok(KeyPairPem { cert, key });
            }
            tracing::info!(cert = %cert_path.display(), "renewing certificate");
        }
        let pair = self.issue(spec, LEAF_VALIDITY)?;
        write_private(&key_path, pair.key.as_bytes())?;
        write_public(&cert_path, pair.cert.as_bytes())?;
        Ok(pair)
    }

    /// Whether a stored leaf was issued by this CA for `spec` and has
    /// more than [`RENEW_BEFORE`] left.
    fn still_good(&self, cert_pem: &str, spec: &LeafSpec) -> bool {
        let Some(info) = CertInfo::from_pem(cert_pem) else {
            return false;
        };
        let ca = CertInfo::from_pem(&self.cert_pem);
        ca.is_some_and(|ca| ca.subject_dn == info.issuer_dn)
            && info.remaining() > RENEW_BEFORE
            && info.common_name == spec.common_name
            && info.organizations == spec.organizations
            && spec.dns_names.iter().all(|d| info.dns_names.contains(d))
            && spec.ips.iter().all(|ip| info.ips.contains(ip))
    }
}

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub common_name: String,
    pub organizations: Vec<String>,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    /// Seconds since the epoch.
    pub not_after: i64,
    subject_dn: String,
    issuer_dn: String,
}

impl CertInfo {
    /// Read a DER certificate.
    pub fn from_der(der: &[u8]) -> Option<Self> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject = cert.subject();
        let common_name = subject
            .iter_common_name()
            .filter_map(|a| a.as_str().ok())
            .next()
            .unwrap_or_default()
            .to_string();
        let organizations = subject
            .iter_organization()
            .filter_map(|a| a.as_str().ok().map(String::from))
            .collect();
        let mut dns_names = Vec::new();
        let mut ips = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    GeneralName::DNSName(d) => dns_names.push(d.to_string()),
                    GeneralName::IPAddress(b) => match b.len() {
                        4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).ok()?)),
                        16 => ips.push(IpAddr::from(<[u8; 16]>::try_from(*b).ok()?)),
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
        Some(Self {
            common_name,
            organizations,
            dns_names,
            ips,
            not_after: cert.validity().not_after.timestamp(),
            subject_dn: cert.subject().to_string(),
            issuer_dn: cert.issuer().to_string(),
        })
    }

    /// Read the first certificate of a PEM document.
    pub fn from_pem(pem: &str) -> Option<Self> {
        let der = certs_from_pem(pem).ok()?.into_iter().next()?;
        Self::from_der(&der)
    }

    /// Time left before expiry (zero once expired).
    pub fn remaining(&self) -> Duration {
        let left = self.not_after - chrono::Utc::now().timestamp();
        Duration::from_secs(left.max(0) as u64)
    }
}

/// Every certificate in a PEM document, as DER.
pub fn certs_from_pem(
    pem: &str,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

/// The private key of a PEM document.
pub fn key_from_pem(pem: &str) -> Result<rustls::pki_types::PrivateKeyDer<'static>, String> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| e.to_string())
}

/// The lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new PEM certificate signing request and its private key, for a
/// client (an agent asking for its node identity).
pub fn new_csr(common_name: &str) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    p.distinguished_name = dn;
    let csr = p.serialize_request(&key)?;
    Ok((
        csr.pem().map_err(|e| PkiError::BadRequest(e.to_string()))?,
        key.serialize_pem(),
    ))
}

/// A new random private key, as PKCS#8 PEM (the ServiceAccount signing key).
pub fn new_signing_key() -> Result<String, PkiError> {
    Ok(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?.serialize_pem())
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Read {
        path: path.into(),
        source,
    })
}

/// Write `bytes` to `path` atomically, readable only by the owner.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    write_mode(path, bytes, 0o600)
}

fn write_public(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    write_mode(path, bytes, 0o644)
}

fn write_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| PkiError::Write {
        path: path.into(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_issues_leaves_and_keeps_them_until_they_need_renewal() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path(), "client-ca", "wasmkube-client-ca").unwrap();
        let spec = LeafSpec::client("system:admin", &["system:masters"]);
        let first = ca.ensure_leaf(dir.path(), "admin", &spec).unwrap();
        let info = CertInfo::from_pem(&first.cert).unwrap();
        assert_eq!(info.common_name, "system:admin");
        assert_eq!(info.organizations, vec!["system:masters".to_string()]);
        assert!(info.remaining() > RENEW_BEFORE);
        // a second start keeps the same certificate
        let again = ca.ensure_leaf(dir.path(), "admin", &spec).unwrap();
        assert_eq!(again.cert, first.cert);
        // the key is private
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("admin.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // the CA reloads from disk and still recognises its leaf
        let reloaded = Ca::load_or_create(dir.path(), "client-ca", "ignored").unwrap();
        assert_eq!(reloaded.cert_pem, ca.cert_pem);
        let kept = reloaded.ensure_leaf(dir.path(), "admin", &spec).unwrap();
        assert_eq!(kept.cert, first.cert);
        // a leaf of another CA is replaced
        let other = Ca::load_or_create(&dir.path().join("other"), "ca", "other").unwrap();
        let replaced = other.ensure_leaf(dir.path(), "admin", &spec).unwrap();
        assert_ne!(replaced.cert, first.cert);
    }

    #[test]
    fn a_serving_certificate_is_reissued_when_a_name_is_added() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path(), "server-ca", "wasmkube-server-ca").unwrap();
        let ips = vec!["127.0.0.1".parse().unwrap()];
        let spec = LeafSpec::server("kube-apiserver", vec!["localhost".into()], ips.clone());
        let first = ca.ensure_leaf(dir.path(), "serving", &spec).unwrap();
        let mut wider = spec.clone();
        wider.dns_names.push("api.example.com".into());
        let second = ca.ensure_leaf(dir.path(), "serving", &wider).unwrap();
        assert_ne!(first.cert, second.cert);
        let info = CertInfo::from_pem(&second.cert).unwrap();
        assert!(info.dns_names.contains(&"api.example.com".to_string()));
        assert_eq!(info.ips, ips);
    }

    #[test]
    fn a_signed_request_gets_the_subject_the_signer_chose() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path(), "client-ca", "c").unwrap();
        let (csr, _key) = new_csr("system:admin").unwrap();
        let cert = ca
            .sign_csr(
                &csr,
                &LeafSpec::client("system:node:n1", &["system:nodes"]),
                LEAF_VALIDITY,
            )
            .unwrap();
        let info = CertInfo::from_pem(&cert).unwrap();
        assert_eq!(info.common_name, "system:node:n1");
        assert_eq!(info.organizations, vec!["system:nodes".to_string()]);
        assert!(ca
            .sign_csr("not a csr", &LeafSpec::client("x", &[]), LEAF_VALIDITY)
            .is_err());
    }
}
