//! `wk secrets-encrypt`: the encryption-at-rest status, and key rotation:
//! a new sealing key, every Secret written again under it, a snapshot so
//! the log no longer reaches back to the old key, then the old key dropped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::api::ApiError;
use crate::store::encryption::{key_name, PROVIDER};
use crate::store::{Precondition, Request, StoreError};

use super::{ApiState, Failure};

const SECRETS: &str = "core/secrets/";

/// `GET /wk/v1/secrets-encrypt/status`.
pub async fn status(State(state): State<Arc<ApiState>>) -> Response {
    match status_of(&state) {
        Ok(v) => Json(v).into_response(),
        Err(e) => Failure(e).into_response(),
    }
}

fn status_of(state: &ApiState) -> Result<Value, ApiError> {
    let keyring = state.store.keyring();
    let stored = state
        .store
        .stored(SECRETS)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut by_key: BTreeMap<String, usize> = BTreeMap::new();
    for (_, v) in &stored {
        *by_key
            .entry(
                key_name(v)
                    .unwrap_or("identity (not encrypted)")
                    .to_string(),
            )
            .or_default() += 1;
    }
    let names = keyring.names();
    Ok(json!({
        "encryption": "Enabled",
        "provider": PROVIDER,
        "activeKey": names.first(),
        "keys": names,
        "config": keyring.path().display().to_string(),
        "secretsByKey": by_key,
    }))
}

/// `POST /wk/v1/secrets-encrypt/rotate-keys`.
pub async fn rotate_keys(State(state): State<Arc<ApiState>>) -> Response {
    match rotate(&state).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => Failure(e).into_response(),
    }
}

async fn rotate(state: &ApiState) -> Result<Value, ApiError> {
    static ROTATING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one_at_a_time = ROTATING.lock().await;
    let servers = state.store.members().members.len();
    if servers > 1 {
        // the new key would exist on this server only, and the others
        // could not open what it seals
        return Err(ApiError::BadRequest(format!(
            "key rotation is not supported yet on a cluster of {servers} servers: the new key would be on this server only"
        )));
    }
    let internal = |e: &dyn std::fmt::Display| ApiError::Internal(e.to_string());
    let keyring = state.store.keyring();
    let key = keyring.rotate().map_err(|e| internal(&e))?;
    tracing::info!(%key, "rotating the secrets encryption key");
    // write every Secret again: it is sealed under the new key
    let (_, objects) = state.store.cache().dump();
    let mut rewritten = 0usize;
    for (k, obj) in objects.into_iter().filter(|(k, _)| k.starts_with(SECRETS)) {
        let req = Request::Put {
            key: k.clone(),
            object: obj.clone(),
            precondition: Precondition {
                resource_version: Some(crate::store::types::revision_of(&obj)),
                ..Default::default()
            },
        };
        match state.store.write(req).await {
            Ok(_) => rewritten += 1,
            // changed or deleted since: that write used the new key already
            Err(StoreError::Rejected(_)) => {}
            Err(e) => return Err(internal(&e)),
        }
    }
    // a snapshot taken now is all new-key; after it the log never needs the old key
    let applied = state
        .store
        .raft()
        .metrics()
        .borrow()
        .last_applied
        .map(|l| l.index)
        .unwrap_or(0);
    state
        .store
        .raft()
        .trigger()
        .snapshot()
        .await
        .map_err(|e| internal(&e))?;
    state
        .store
        .raft()
        .wait(Some(Duration::from_secs(60)))
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= applied),
            "a snapshot after the re-encryption",
        )
        .await
        .map_err(|e| internal(&e))?;
    keyring.retire_old().map_err(|e| internal(&e))?;
    tracing::info!(%key, rewritten, "secrets re-encrypted; old keys retired");
    Ok(json!({"activeKey": key, "reencrypted": rewritten, "status": status_of(state)?}))
}
