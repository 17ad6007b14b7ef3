//! ServiceAccount tokens: JWTs signed ES256 with the cluster's key, with the
//! claims kube-apiserver puts in them (issuer, audiences, expiry, and the
//! `kubernetes.io` claim naming the ServiceAccount and the pod, secret or
//! node the token is bound to). The public key is published as a JWKS so
//! other parties can verify tokens the OIDC way.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The issuer (and default audience) of the cluster's tokens, as k3s sets it.
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// A name and uid, as the `kubernetes.io` claim holds them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ref {
    pub name: String,
    pub uid: String,
}

/// The private `kubernetes.io` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesClaim {
    pub namespace: String,
    pub serviceaccount: Ref,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Ref>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Ref>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Ref>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warnafter: Option<i64>,
}

/// The claims of a ServiceAccount token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaim,
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the service account signing key is unusable: {0}")]
    Key(String),
    #[error("signing a token: {0}")]
    Sign(String),
    #[error("invalid bearer token: {0}")]
    Invalid(String),
}

/// Signs and verifies the cluster's ServiceAccount tokens.
pub struct Signer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    kid: String,
    jwk: Value,
    pub issuer: String,
    /// The audiences a token must name to be accepted by the API server.
    pub api_audiences: Vec<String>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("kid", &self.kid).finish()
    }
}

impl Signer {
    /// A signer over a PKCS#8 PEM ECDSA P-256 key.
    pub fn from_pem(key_pem: &str, issuer: &str) -> Result<Self, TokenError> {
        let key = rcgen::KeyPair::from_pem(key_pem).map_err(|e| TokenError::Key(e.to_string()))?;
        let point = key.public_key_raw();
        if point.len() != 65 || point[0] != 4 {
            return Err(TokenError::Key(
                "not an uncompressed P-256 public key".into(),
            ));
        }
        let (x, y) = (
            URL_SAFE_NO_PAD.encode(&point[1..33]),
            URL_SAFE_NO_PAD.encode(&point[33..]),
        );
        // kube-apiserver's key id: the hash of the public key's DER
        let kid = URL_SAFE_NO_PAD
            .encode(ring::digest::digest(&ring::digest::SHA256, &key.public_key_der()).as_ref());
        Ok(Self {
            encoding: EncodingKey::from_ec_der(key.serialized_der()),
            decoding: DecodingKey::from_ec_der(point),
            jwk: json!({"use": "sig", "kty": "EC", "kid": kid, "crv": "P-256", "alg": "ES256", "x": x, "y": y}),
            kid,
            issuer: issuer.to_string(),
            api_audiences: vec![issuer.to_string()],
        })
    }

    /// Sign `claims`.
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| TokenError::Sign(e.to_string()))
    }

    /// New claims for ServiceAccount `ns/name` (uid `sa_uid`), valid for
    /// `seconds` from now, for `audiences` (default: the API server's).
    pub fn claims(
        &self,
        ns: &str,
        sa: Ref,
        audiences: Vec<String>,
        seconds: i64,
        pod: Option<Ref>,
        node: Option<Ref>,
    ) -> Claims {
        let now = chrono::Utc::now().timestamp();
        Claims {
            iss: self.issuer.clone(),
            sub: super::service_account_user(ns, &sa.name),
            aud: if audiences.is_empty() {
                self.api_audiences.clone()
            } else {
                audiences
            },
            exp: now + seconds,
            iat: now,
            nbf: now,
            jti: uuid::Uuid::new_v4().to_string(),
            kubernetes: KubernetesClaim {
                namespace: ns.to_string(),
                serviceaccount: sa,
                pod,
                secret: None,
                node,
                warnafter: None,
            },
        }
    }

    /// Check the signature, issuer, audience and validity period of
    /// `token`; whether its ServiceAccount and pod still exist is the
    /// caller's to check.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let mut v = Validation::new(Algorithm::ES256);
        v.leeway = 0;
        v.validate_nbf = true;
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&self.api_audiences);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &v)
            .map(|d| d.claims)
            .map_err(|e| TokenError::Invalid(e.to_string()))
    }

    /// `/openid/v1/jwks`.
    pub fn jwks(&self) -> Value {
        json!({"keys": [self.jwk]})
    }

    /// `/.well-known/openid-configuration`.
    pub fn openid_configuration(&self) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}/openid/v1/jwks", self.issuer),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }
}

/// Whether `token` looks like a JWT (three dot-separated parts).
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        Signer::from_pem(&crate::tls::pki::new_signing_key().unwrap(), DEFAULT_ISSUER).unwrap()
    }

    fn sa() -> Ref {
        Ref {
            name: "default".into(),
            uid: "u1".into(),
        }
    }

    #[test]
    fn tokens_verify_until_they_expire() {
        let s = signer();
        let claims = s.claims("team", sa(), vec![], 3600, None, None);
        let token = s.sign(&claims).unwrap();
        assert!(looks_like_jwt(&token));
        let back = s.verify(&token).unwrap();
        assert_eq!(back, claims);
        assert_eq!(back.sub, "system:serviceaccount:team:default");
        let expired = s.claims("team", sa(), vec![], -10, None, None);
        assert!(s.verify(&s.sign(&expired).unwrap()).is_err());
        let jwk = &s.jwks()["keys"][0];
        assert_eq!(jwk["alg"], "ES256");
        assert_eq!(jwk["x"].as_str().unwrap().len(), 43);
    }

    #[test]
    fn forged_tampered_and_foreign_tokens_fail() {
        let s = signer();
        let token = s
            .sign(&s.claims("team", sa(), vec![], 3600, None, None))
            .unwrap();
        // another key's token
        let other = signer();
        let foreign = other
            .sign(&other.claims("team", sa(), vec![], 3600, None, None))
            .unwrap();
        assert!(s.verify(&foreign).is_err());
        // a tampered payload (another namespace) breaks the signature
        let parts: Vec<&str> = token.split('.').collect();
        let mut payload: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        payload["sub"] = json!("system:serviceaccount:kube-system:admin");
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(payload.to_string()),
            parts[2]
        );
        assert!(s.verify(&tampered).is_err());
        // "alg": "none"
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
            parts[1]
        );
        assert!(s.verify(&none).is_err());
        // another audience
        let aud = s
            .sign(&s.claims("team", sa(), vec!["vault".into()], 3600, None, None))
            .unwrap();
        assert!(s.verify(&aud).is_err());
    }
}
