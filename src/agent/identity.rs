//! The agent's own identity: a client certificate for `system:node:NAME`
//! (how it talks to the API server), a serving certificate for its kubelet
//! API, and the two cluster CAs, kept under `DATA_DIR/tls`. A new agent
//! gets them by joining: it fetches `/cacerts`, checks the bundle against
//! the hash in its join token before sending anything secret, then sends
//! certificate requests with the token and its node password.

use std::path::{Path, PathBuf};

use crate::auth::join::{Credential, JoinRequest, JoinResponse, JoinToken};
use crate::tls::pki::{self, CertInfo, KeyPairPem, RENEW_BEFORE};

/// Errors getting the node's identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("the join token: {0}")]
    Token(#[from] crate::auth::join::TokenFormatError),
    #[error("fetching the cluster CA from {url}: {detail}")]
    FetchCa { url: String, detail: String },
    #[error("the server's CA certificate does not match the hash in the join token (token says {expected}, {url} serves {actual}): refusing to send the token to this server")]
    CaMismatch {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("joining at {url}: {detail}")]
    Join { url: String, detail: String },
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
}

impl IdentityError {
    /// Whether trying again may help (the server could not be reached),
    /// as opposed to a refusal or a token that cannot work.
    pub fn is_transient(&self) -> bool {
        matches!(self, IdentityError::FetchCa { .. })
    }
}

/// What an agent proves itself with.
#[derive(Clone)]
pub struct NodeIdentity {
    /// `system:node:NAME`, for the API server.
    pub client: KeyPairPem,
    /// The kubelet API's serving certificate.
    pub serving: KeyPairPem,
    /// Verifies the API server (and other servers).
    pub server_ca: String,
    /// Verifies the API server's client certificate when it calls the agent.
    pub client_ca: String,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity").finish_non_exhaustive()
    }
}

const FILES: [&str; 6] = [
    "client-node.crt",
    "client-node.key",
    "serving.crt",
    "serving.key",
    "server-ca.crt",
    "client-ca.crt",
];

fn tls_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tls")
}

impl NodeIdentity {
    /// The identity saved by an earlier run, if it is for `node` and not
    /// close to expiry.
    pub fn load(data_dir: &Path, node: &str) -> Option<Self> {
        let dir = tls_dir(data_dir);
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
        let id = Self {
            client: KeyPairPem {
                cert: read(FILES[0])?,
                key: read(FILES[1])?,
            },
            serving: KeyPairPem {
                cert: read(FILES[2])?,
                key: read(FILES[3])?,
            },
            server_ca: read(FILES[4])?,
            client_ca: read(FILES[5])?,
        };
        let fresh =
            |pem: &str| CertInfo::from_pem(pem).is_some_and(|i| i.remaining() > RENEW_BEFORE);
        let info = CertInfo::from_pem(&id.client.cert)?;
        (info.common_name == format!("{}{node}", crate::auth::NODE_PREFIX)
            && fresh(&id.client.cert)
            && fresh(&id.serving.cert))
        .then_some(id)
    }

    /// Keep the identity (keys mode 0600).
    pub fn save(&self, data_dir: &Path) -> Result<(), pki::PkiError> {
        let dir = tls_dir(data_dir);
        for (file, content) in FILES.iter().zip([
            &self.client.cert,
            &self.client.key,
            &self.serving.cert,
            &self.serving.key,
            &self.server_ca,
            &self.client_ca,
        ]) {
            pki::write_private(&dir.join(file), content.as_bytes())?;
        }
        Ok(())
    }
}

/// The node password: made on first start, kept in the data directory.
pub fn node_password(data_dir: &Path) -> Result<String, pki::PkiError> {
    let path = data_dir.join("node-password");
    if let Ok(p) = std::fs::read_to_string(&path) {
        if p.trim().len() >= 16 {
            return Ok(p.trim().to_string());
        }
    }
    let p = crate::auth::join::random_alnum(32);
    pki::write_private(&path, p.as_bytes())?;
    Ok(p)
}

/// A join request with fresh keys; returns the request and the two private keys.
pub fn request(
    node: &str,
    password: &str,
    addresses: &[String],
) -> Result<(JoinRequest, String, String), pki::PkiError> {
    let (client_csr, client_key) = pki::new_csr(&format!("{}{node}", crate::auth::NODE_PREFIX))?;
    let (serving_csr, serving_key) = pki::new_csr(node)?;
    Ok((
        JoinRequest {
            node_name: node.to_string(),
            node_password: password.to_string(),
            client_csr,
            serving_csr,
            addresses: addresses.to_vec(),
        },
        client_key,
        serving_key,
    ))
}

/// The identity made of a join answer and the keys of its request.
pub fn from_response(resp: JoinResponse, client_key: String, serving_key: String) -> NodeIdentity {
    NodeIdentity {
        client: KeyPairPem {
            cert: resp.client_certificate,
            key: client_key,
        },
        serving: KeyPairPem {
            cert: resp.serving_certificate,
            key: serving_key,
        },
        server_ca: resp.server_ca,
        client_ca: resp.client_ca,
    }
}

/// Join the cluster at `server` with `token`.
pub async fn join(
    server: &str,
    token: &str,
    node: &str,
    password: &str,
    addresses: &[String],
) -> Result<NodeIdentity, IdentityError> {
    let token: JoinToken = token.parse()?;
    let server = server.trim_end_matches('/');
    let url = format!("{server}/cacerts");
    let fetch = |detail: String| IdentityError::FetchCa {
        url: url.clone(),
        detail,
    };
    // no secret travels on this connection: the answer is checked against the token
    let insecure = crate::tls::insecure_http_client().map_err(|e| fetch(e.to_string()))?;
    let ca = insecure
        .get(&url)
        .send()
        .await
        .map_err(|e| fetch(e.to_string()))?
        .error_for_status()
        .map_err(|e| fetch(e.to_string()))?
        .text()
        .await
        .map_err(|e| fetch(e.to_string()))?;
    let actual = pki::sha256_hex(ca.as_bytes());
    if actual != token.ca_hash {
        return Err(IdentityError::CaMismatch {
            url,
            expected: token.ca_hash,
            actual,
        });
    }
    let join_url = format!("{server}/v1-wk/join");
    let err = |detail: String| IdentityError::Join {
        url: join_url.clone(),
        detail,
    };
    let http = crate::tls::http_client(&ca, None).map_err(|e| err(e.to_string()))?;
    let (req, client_key, serving_key) = request(node, password, addresses)?;
    let credential = match &token.credential {
        Credential::Server(s) => format!("server:{s}"),
        Credential::Bootstrap { id, secret } => format!("{id}.{secret}"),
    };
    let resp = http
        .post(&join_url)
        .bearer_auth(credential)
        .json(&req)
        .send()
        .await
        .map_err(|e| err(e.to_string()))?;
    if !resp.status().is_success() {
        let code = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        return Err(err(format!(
            "{code}: {}",
            body["message"].as_str().unwrap_or("refused")
        )));
    }
    let answer: JoinResponse = resp.json().await.map_err(|e| err(e.to_string()))?;
    Ok(from_response(answer, client_key, serving_key))
}
