//! Join tokens in k3s's format: `K10<sha256 of the CA bundle>::<credential>`.
//! The hash lets a new agent check the server's CA before it sends the
//! credential; the credential is `server:<secret>` (the server's token) or
//! `<id>.<secret>` (a bootstrap token made by `wk token create`).

use std::fmt;

/// The prefix of a token carrying a CA hash.
pub const PREFIX: &str = "K10";

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Lowercase hex SHA-256 of the server CA bundle.
    pub ca_hash: String,
    pub credential: Credential,
}

/// What the token proves.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// The server's own token: `server:<secret>`.
    Server(String),
    /// A bootstrap token: `<id>.<secret>` (6 and 16 characters of `[a-z0-9]`).
    Bootstrap { id: String, secret: String },
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // never print the secret
        match self {
            Credential::Server(_) => f.write_str("Server(…)"),
            Credential::Bootstrap { id, .. } => write!(f, "Bootstrap({id}.…)"),
        }
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // never print the secret
        let id = match &self.credential {
            Credential::Server(_) => "server".to_string(),
            Credential::Bootstrap { id, .. } => id.clone(),
        };
        write!(f, "JoinToken({PREFIX}{}::{id}:…)", self.ca_hash)
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenFormatError {
    #[error("the token has no CA hash: use the full K10… token (the server's DATA_DIR/token or `wk token create`), so the server's CA can be checked before the token is sent")]
    NoHash,
    #[error("the token's CA hash {0:?} is not a hex SHA-256")]
    BadHash(String),
    #[error("the token's credential is neither server:<secret> nor <id>.<secret>")]
    BadCredential,
}

fn lower_alnum(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

impl std::str::FromStr for JoinToken {
    type Err = TokenFormatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let rest = s.strip_prefix(PREFIX).ok_or(TokenFormatError::NoHash)?;
        let (hash, cred) = rest.split_once("::").ok_or(TokenFormatError::NoHash)?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TokenFormatError::BadHash(hash.to_string()));
        }
        let credential = if let Some(secret) = cred.strip_prefix("server:") {
            if secret.is_empty() {
                return Err(TokenFormatError::BadCredential);
            }
            Credential::Server(secret.to_string())
        } else {
            match cred.split_once('.') {
                Some((id, secret)) if lower_alnum(id, 6) && lower_alnum(secret, 16) => {
                    Credential::Bootstrap {
                        id: id.to_string(),
                        secret: secret.to_string(),
                    }
                }
                _ => return Err(TokenFormatError::BadCredential),
            }
        };
        Ok(Self {
            ca_hash: hash.to_ascii_lowercase(),
            credential,
        })
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.credential {
            Credential::Server(secret) => write!(f, "{PREFIX}{}::server:{secret}", self.ca_hash),
            Credential::Bootstrap { id, secret } => {
                write!(f, "{PREFIX}{}::{id}.{secret}", self.ca_hash)
            }
        }
    }
}

/// A random string of `len` characters of `[a-z0-9]`.
pub fn random_alnum(len: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

/// The name of the Secret that holds bootstrap token `id` (in `kube-system`).
pub fn bootstrap_secret_name(id: &str) -> String {
    format!("bootstrap-token-{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_bad_ones_say_why() {
        let hash = "ab".repeat(32);
        let server: JoinToken = format!("K10{hash}::server:s3cret").parse().unwrap();
        assert_eq!(server.credential, Credential::Server("s3cret".into()));
        assert_eq!(server.to_string(), format!("K10{hash}::server:s3cret"));
        let boot: JoinToken = format!("K10{hash}::abcdef.0123456789abcdef")
            .parse()
            .unwrap();
        assert!(matches!(boot.credential, Credential::Bootstrap { ref id, .. } if id == "abcdef"));
        assert!(
            !format!("{boot:?}").contains("0123456789abcdef"),
            "Debug hides the secret"
        );
        assert_eq!("s3cret".parse::<JoinToken>(), Err(TokenFormatError::NoHash));
        assert!(matches!(
            "K10xyz::server:a".parse::<JoinToken>(),
            Err(TokenFormatError::BadHash(_))
        ));
        assert_eq!(
            format!("K10{hash}::abc.def").parse::<JoinToken>(),
            Err(TokenFormatError::BadCredential)
        );
        assert_eq!(random_alnum(16).len(), 16);
    }
}

/// What an agent sends to join (`POST /v1-wk/join`, with the token's
/// credential as its bearer token).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinRequest {
    pub node_name: String,
    /// The agent's own secret: a second machine cannot take the name.
    pub node_password: String,
    /// PEM certificate signing requests for the node's client identity and
    /// for its kubelet API's serving certificate.
    pub client_csr: String,
    pub serving_csr: String,
    /// The node's addresses, for the serving certificate.
    pub addresses: Vec<String>,
}

/// What the server answers.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinResponse {
    /// `system:node:NAME` in `system:nodes`, from the client CA.
    pub client_certificate: String,
    /// For the node's addresses and name, from the server CA.
    pub serving_certificate: String,
    pub server_ca: String,
    pub client_ca: String,
}

/// The name of the Secret (in `kube-system`) holding a node's password hash.
pub fn node_password_secret(node: &str) -> String {
    format!("{node}.node-password.wasmkube")
}
