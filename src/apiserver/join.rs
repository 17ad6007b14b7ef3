//! Joining: `/cacerts` (the server CA, public, so an agent can check it
//! against the hash in its join token before sending anything secret) and
//! `POST /v1-wk/join`, which signs a new node's certificate requests once
//! its token and node password check out.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::{json, Value};

use crate::api::resources;
use crate::api::ApiError;
use crate::auth::join::{bootstrap_secret_name, node_password_secret, JoinRequest, JoinResponse};
use crate::auth::{NODES, NODE_PREFIX};
use crate::store::Store;
use crate::tls::pki::{sha256_hex, LEAF_VALIDITY};
use crate::tls::LeafSpec;

use super::auth::Security;
use super::request::Params;
use super::{handlers, ApiState, Failure};

/// `GET /cacerts`: the server CA bundle.
pub async fn cacerts(State(state): State<Arc<ApiState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain")],
        state.security.server_ca.cert_pem.clone(),
    )
        .into_response()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn secret_value(secret: &Value, key: &str) -> String {
    secret["data"][key]
        .as_str()
        .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_default()
}

/// Check a join credential (`server:SECRET` or `ID.SECRET`).
pub fn check_credential(
    security: &Security,
    store: &Store,
    credential: &str,
) -> Result<(), ApiError> {
    if let Some(secret) = credential.strip_prefix("server:") {
        return if constant_time_eq(secret.as_bytes(), security.join_secret.as_bytes()) {
            Ok(())
        } else {
            Err(ApiError::Unauthorized)
        };
    }
    let (id, secret) = credential.split_once('.').ok_or(ApiError::Unauthorized)?;
    let secrets = resources::lookup("secrets").expect("secrets are served");
    let s = store
        .cache()
        .get(&secrets.key("kube-system", &bootstrap_secret_name(id)))
        .ok_or(ApiError::Unauthorized)?;
    if s["type"] != "bootstrap.kubernetes.io/token"
        || secret_value(&s, "usage-bootstrap-authentication") != "true"
        || !constant_time_eq(
            secret_value(&s, "token-secret").as_bytes(),
            secret.as_bytes(),
        )
    {
        return Err(ApiError::Unauthorized);
    }
    let expiration = secret_value(&s, "expiration");
    if !expiration.is_empty() {
        let expired = chrono::DateTime::parse_from_rfc3339(&expiration)
            .map(|t| t < chrono::Utc::now())
            .unwrap_or(true);
        if expired {
            tracing::info!(token = id, "refused an expired join token");
            return Err(ApiError::Unauthorized);
        }
    }
    Ok(())
}

/// Record the node's password on first join; refuse a different one later
/// (unless `owner`: the server's own embedded agent, which the server
/// vouches for, takes the name, e.g. after a restore).
async fn check_node_password(
    store: &Store,
    node: &str,
    password: &str,
    owner: bool,
) -> Result<(), ApiError> {
    if password.len() < 16 {
        return Err(ApiError::BadRequest(
            "the node password must have at least 16 characters".into(),
        ));
    }
    let secrets = resources::lookup("secrets").expect("secrets are served");
    let name = node_password_secret(node);
    let hash = sha256_hex(password.as_bytes());
    if let Some(s) = store.cache().get(&secrets.key("kube-system", &name)) {
        return if constant_time_eq(secret_value(&s, "hash").as_bytes(), hash.as_bytes()) {
            Ok(())
        } else if owner {
            let mut next = (*s).clone();
            next["data"] = json!({"hash": base64::engine::general_purpose::STANDARD.encode(&hash)});
            handlers::update(
                store,
                secrets,
                "kube-system",
                &name,
                next,
                handlers::Part::Main,
                &Params::default(),
            )
            .await
            .map(|_| ())
        } else {
            Err(ApiError::Forbidden {
                resource: "nodes".into(),
                name: node.into(),
                detail: format!(
                    "node password mismatch: a node named {node:?} has already joined from another machine (delete the Node and secret kube-system/{name} to reuse the name)"
                ),
            })
        };
    }
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "type": "wasmkube.io/node-password",
        "metadata": {"name": name, "namespace": "kube-system", "labels": {"wasmkube.io/node": node}},
        "stringData": {"hash": hash}});
    match handlers::create(
        store,
        secrets,
        Some("kube-system"),
        secret,
        &Params::default(),
    )
    .await
    {
        Ok(_) => Ok(()),
        // joined at the same moment from somewhere: decide against the stored one
        Err(ApiError::AlreadyExists { .. }) => {
            Box::pin(check_node_password(store, node, password, owner)).await
        }
        Err(e) => Err(e),
    }
}

/// Sign a node's certificates (after its credential was checked). `owner`:
/// the request comes from this server's embedded agent.
pub async fn issue_node(
    security: &Security,
    store: &Store,
    req: &JoinRequest,
    owner: bool,
) -> Result<JoinResponse, ApiError> {
    crate::api::validation::check_dns_subdomain(&req.node_name)
        .map_err(|e| ApiError::BadRequest(format!("node name {:?}: {e}", req.node_name)))?;
    check_node_password(store, &req.node_name, &req.node_password, owner).await?;
    let user = format!("{NODE_PREFIX}{}", req.node_name);
    let bad = |e: crate::tls::PkiError| ApiError::BadRequest(e.to_string());
    let client = security
        .client_ca
        .sign_csr(
            &req.client_csr,
            &LeafSpec::client(&user, &[NODES]),
            LEAF_VALIDITY,
        )
        .map_err(bad)?;
    let ips = req
        .addresses
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect();
    let serving = security
        .server_ca
        .sign_csr(
            &req.serving_csr,
            &LeafSpec::server(
                &req.node_name,
                vec![req.node_name.clone(), "localhost".into()],
                ips,
            ),
            LEAF_VALIDITY,
        )
        .map_err(bad)?;
    tracing::info!(node = %req.node_name, "issued node certificates");
    Ok(JoinResponse {
        client_certificate: client,
        serving_certificate: serving,
        server_ca: security.server_ca.cert_pem.clone(),
        client_ca: security.client_ca.cert_pem.clone(),
    })
}

/// `POST /v1-wk/join`.
pub async fn join(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let credential = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if let Err(e) = check_credential(&state.security, &state.store, credential) {
        return Failure(e).into_response();
    }
    let req: JoinRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return Failure(ApiError::BadRequest(format!("join request: {e}"))).into_response()
        }
    };
    match issue_node(&state.security, &state.store, &req, false).await {
        Ok(resp) => (StatusCode::OK, Json(resp)).into_response(),
        Err(e) => Failure(e).into_response(),
    }
}
