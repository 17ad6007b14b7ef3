//! The HA endpoints.
//!
//! Peers only (`system:wk-servers`, under `/raft/`):
//! - `POST /raft/write?target=ID`: a write forwarded by a follower.
//! - `POST /raft/read-index?target=ID`: the leader's ReadIndex.
//! - `POST /raft/join`: add a server (learner, caught up, then voter);
//!   a follower passes it on to the leader.
//!
//! Admins: `GET /wk/v1/cluster/members`, `DELETE /wk/v1/cluster/members/{id}`.
//!
//! A new server with the join token: `POST /v1-wk/join-server` answers the
//! cluster's CAs, service-account key, Secret encryption keys and token, so
//! the new server can prove itself to its peers and read what they store.
//! Only the server token (`K10…::server:…`) is accepted, never a bootstrap
//! token: those are for agents.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::api::ApiError;
use crate::store::cluster::{ForwardReply, JoinRequest, ReadIndexReply};
use crate::store::{NodeId, Request, StoreError};

use super::{ApiState, Failure};

/// `?target=ID` of a Raft RPC.
#[derive(Debug, Deserialize)]
pub struct Target {
    pub target: Option<NodeId>,
}

/// Refuse an RPC meant for another server.
pub fn check_target(state: &ApiState, t: &Target) -> Result<(), Box<Response>> {
    let me = state.store.node_id();
    match t.target {
        Some(id) if id == me => Ok(()),
        other => Err(Box::new(
            (
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "this is server {me}; the request is for {}",
                    other.map_or_else(|| "no server (no ?target=)".into(), |i| i.to_string())
                ),
            )
                .into_response(),
        )),
    }
}

pub async fn forwarded_write(
    State(state): State<Arc<ApiState>>,
    target: Query<Target>,
    Json(req): Json<Request>,
) -> Response {
    if let Err(r) = check_target(&state, &target) {
        return *r;
    }
    Json(ForwardReply::from(state.store.write_here(req).await)).into_response()
}

pub async fn read_index(State(state): State<Arc<ApiState>>, target: Query<Target>) -> Response {
    if let Err(r) = check_target(&state, &target) {
        return *r;
    }
    let reply = match state.store.read_index_here().await {
        Ok(i) => ReadIndexReply::Index(i),
        Err(StoreError::NotLeader { leader, leader_id }) => {
            ReadIndexReply::NotLeader { leader, leader_id }
        }
        Err(e) => ReadIndexReply::Failed(e.to_string()),
    };
    Json(reply).into_response()
}

fn store_failure(e: StoreError) -> Response {
    let api = match e {
        StoreError::NotLeader { .. } | StoreError::NoLeader(_) => {
            ApiError::Unavailable(e.to_string())
        }
        other => ApiError::BadRequest(other.to_string()),
    };
    Failure(api).into_response()
}

pub async fn join(State(state): State<Arc<ApiState>>, Json(req): Json<JoinRequest>) -> Response {
    match state.store.join_via_leader(&req).await {
        Ok(m) => Json(m).into_response(),
        Err(e) => store_failure(e),
    }
}

pub async fn members(State(state): State<Arc<ApiState>>) -> Response {
    Json(state.store.members()).into_response()
}

pub async fn remove(State(state): State<Arc<ApiState>>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<NodeId>() else {
        return Failure(ApiError::BadRequest(format!(
            "{id:?} is not a server id (see `wk cluster members`)"
        )))
        .into_response();
    };
    match state.store.remove_via_leader(id).await {
        Ok(m) => Json(m).into_response(),
        Err(e) => store_failure(e),
    }
}

/// `POST /raft/remove/{id}?target=ID`: a removal passed on by a follower.
pub async fn remove_here(
    State(state): State<Arc<ApiState>>,
    target: Query<Target>,
    Path(id): Path<NodeId>,
) -> Response {
    if let Err(r) = check_target(&state, &target) {
        return *r;
    }
    match state.store.remove_member(id).await {
        Ok(m) => Json(m).into_response(),
        Err(e) => store_failure(e),
    }
}

/// `POST /raft/removed?target=ID`: the leader removed this server.
pub async fn removed(State(state): State<Arc<ApiState>>, target: Query<Target>) -> Response {
    if let Err(r) = check_target(&state, &target) {
        return *r;
    }
    state.store.mark_removed();
    StatusCode::NO_CONTENT.into_response()
}

/// What a joining server gets: file contents by path under its data
/// directory.
#[derive(Debug, Serialize, Deserialize)]
pub struct Bundle {
    pub files: BTreeMap<String, String>,
}

/// The files of [`Bundle`], relative to the data directory.
pub const BUNDLE_FILES: [&str; 7] = [
    "tls/server-ca.crt",
    "tls/server-ca.key",
    "tls/client-ca.crt",
    "tls/client-ca.key",
    "tls/service.key",
    "cred/encryption-config.json",
    "token",
];

pub async fn bundle(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    let credential = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !credential.starts_with("server:") {
        return Failure(ApiError::Unauthorized).into_response();
    }
    if let Err(e) = super::join::check_credential(&state.security, &state.store, credential) {
        return Failure(e).into_response();
    }
    let mut files = BTreeMap::new();
    for f in BUNDLE_FILES {
        match std::fs::read_to_string(state.data_dir.join(f)) {
            Ok(text) => {
                files.insert(f.to_string(), text);
            }
            Err(e) => {
                return Failure(ApiError::Internal(format!("reading {f}: {e}"))).into_response()
            }
        }
    }
    tracing::info!("sent the cluster's keys to a joining server");
    Json(Bundle { files }).into_response()
}
