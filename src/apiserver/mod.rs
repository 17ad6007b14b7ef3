//! The Kubernetes-shaped HTTP API (axum).
//!
//! Paths, verbs and JSON follow kube-apiserver: `/api/v1/...` for the core
//! group, `/apis/{group}/{version}/...` for the others, `metav1.Status` for
//! errors. Served over TLS only (see `tls::serve`). Every request but
//! `/version`, `/healthz`, `/readyz`, `/livez` and `/cacerts` is
//! authenticated and authorized ([`auth`]); Raft peers call `/raft/*` with
//! their server certificate.

pub mod admission;
pub mod audit;
pub mod auth;
pub mod cluster;
pub mod customresources;
pub mod discovery;
pub mod encryption;
pub mod eviction;
pub mod graph;
pub mod handlers;
pub mod join;
pub mod managers;
pub mod metrics;
pub mod openapi;
pub mod openapi_pb;
pub mod portforward;
pub mod protobuf;
pub mod proxy;
pub mod request;
pub mod reviews;
pub mod serviceaccounts;
pub mod services;
pub mod spdy;
pub mod table;
pub mod warnings;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Extension, Path, Request as HttpRequest, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;

use crate::api::ApiError;
use crate::store::Store;

use handlers::{DeleteOptions, Part, PatchType};
use request::{Params, Target};

/// Shared state of every handler.
pub struct ApiState {
    pub store: Store,
    /// Keys and CAs for authentication and joining.
    pub security: Arc<auth::Security>,
    /// Where audit events go (`--audit-log-path`).
    pub audit: Option<audit::AuditLog>,
    /// Which nodes' pods use which objects (the Node authorizer's graph).
    pub graph: Arc<graph::NodeGraph>,
    /// How often idle watches that asked for bookmarks get one.
    pub bookmark_interval: Duration,
    /// The address clients reach this server at (for `/api` discovery).
    pub advertise: String,
    /// HTTPS client for the agents' kubelet API: trusts the server CA,
    /// presents the API server's client certificate.
    pub kubelet: reqwest::Client,
    /// Why the last exec or attach of a container failed, kept briefly for
    /// the client's retry in the other protocol (see `proxy::Failures`).
    pub stream_failures: proxy::Failures,
    /// The server's data directory (the cluster's keys, for joining servers).
    pub data_dir: std::path::PathBuf,
    /// Turns true on shutdown: open watches end so the server can stop.
    pub shutdown: crate::controllers::CancelToken,
}

/// An [`ApiError`] as an HTTP response.
pub struct Failure(pub ApiError);

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure(e)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.0.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (code, Json(self.0.to_status())).into_response();
        if code == StatusCode::SERVICE_UNAVAILABLE {
            // as kube-apiserver says when its storage is unavailable
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        r
    }
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (code, Json(v)).into_response()
}

/// Build the router.
pub fn router(state: Arc<ApiState>) -> Router {
    let authed = Router::new()
        .route("/api", get(discovery::api_versions))
        .route("/apis", get(discovery::api_groups))
        .route("/apis/metrics.k8s.io", get(metrics::metrics_group))
        .route(
            "/apis/metrics.k8s.io/v1beta1",
            get(metrics::metrics_resources),
        )
        .route(
            "/apis/metrics.k8s.io/v1beta1/nodes",
            get(metrics::list_nodes),
        )
        .route(
            "/apis/metrics.k8s.io/v1beta1/nodes/{name}",
            get(metrics::get_node),
        )
        .route(
            "/apis/metrics.k8s.io/v1beta1/pods",
            get(metrics::list_all_pods),
        )
        .route(
            "/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods",
            get(metrics::list_pods),
        )
        .route(
            "/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods/{name}",
            get(metrics::get_pod),
        )
        .route("/apis/custom.metrics.k8s.io", get(metrics::custom_group))
        .route(
            "/apis/custom.metrics.k8s.io/v1beta2",
            get(metrics::custom_resources),
        )
        .route(
            "/apis/custom.metrics.k8s.io/v1beta2/namespaces/{ns}/pods/{name}/{metric}",
            get(metrics::custom_pod_metric),
        )
        .route("/wk/v1/snapshot", get(snapshot))
        .route("/wk/v1/secrets-encrypt/status", get(encryption::status))
        .route(
            "/wk/v1/secrets-encrypt/rotate-keys",
            post(encryption::rotate_keys),
        )
        // Raft's own bodies are bigger than an API request may be: an
        // append carries many entries, a snapshot chunk a megabyte as JSON
        .route(
            "/raft/append",
            post(raft_append).layer(DefaultBodyLimit::max(crate::store::network::MAX_RPC_BODY)),
        )
        .route("/raft/vote", post(raft_vote))
        .route(
            "/raft/snapshot",
            post(raft_snapshot).layer(DefaultBodyLimit::max(crate::store::network::MAX_RPC_BODY)),
        )
        .route("/raft/write", post(cluster::forwarded_write))
        .route("/raft/read-index", post(cluster::read_index))
        .route("/raft/join", post(cluster::join))
        .route("/raft/remove/{id}", post(cluster::remove_here))
        .route("/raft/removed", post(cluster::removed))
        .route("/wk/v1/cluster/members", get(cluster::members))
        .route(
            "/wk/v1/cluster/members/{id}",
            axum::routing::delete(cluster::remove),
        )
        .route("/openapi/v2", get(openapi_v2))
        .route("/openapi/v3", get(openapi_v3_index))
        .route("/openapi/v3/{*gv}", get(openapi_v3))
        .route("/openid/v1/jwks", get(jwks))
        .route(
            "/.well-known/openid-configuration",
            get(openid_configuration),
        )
        .fallback(dispatch)
        .layer(middleware::from_fn_with_state(state.clone(), auth::guard));
    Router::new()
        .route("/version", get(discovery::version))
        .route("/version/", get(discovery::version))
        .route("/healthz", get(health))
        .route("/livez", get(health))
        .route("/readyz", get(ready))
        .route("/cacerts", get(join::cacerts))
        .route("/v1-wk/join", post(join::join))
        .route("/v1-wk/join-server", post(cluster::bundle))
        .merge(authed)
        .with_state(state)
}

/// `/openapi/v2`: JSON, or protobuf for a client that asks for it first
/// (client-go's discovery client, so kubectl, asks for nothing else).
async fn openapi_v2(headers: HeaderMap) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let doc = openapi::v2_served();
    let (content_type, body) = if openapi_pb::wants_protobuf(accept) {
        (openapi_pb::CONTENT_TYPE, doc.protobuf)
    } else {
        ("application/json", doc.json)
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::VARY, "Accept"),
        ],
        body,
    )
        .into_response()
}

async fn openapi_v3_index() -> Json<Value> {
    Json(openapi::v3_index())
}

async fn openapi_v3(Path(gv): Path<String>) -> Response {
    match openapi::v3_served(&gv) {
        Some(doc) => ([(header::CONTENT_TYPE, "application/json")], doc.json).into_response(),
        None => Failure(ApiError::NotFound {
            resource: "openapi".into(),
            name: gv,
        })
        .into_response(),
    }
}

async fn jwks(State(state): State<Arc<ApiState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/jwk-set+json")],
        state.security.signer.jwks().to_string(),
    )
        .into_response()
}

async fn openid_configuration(State(state): State<Arc<ApiState>>) -> Json<Value> {
    Json(state.security.signer.openid_configuration())
}

async fn health() -> &'static str {
    "ok"
}

async fn ready(State(state): State<Arc<ApiState>>) -> Response {
    let m = state.store.raft().metrics().borrow().clone();
    if m.current_leader.is_some() {
        "ok".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no raft leader").into_response()
    }
}

async fn snapshot(State(state): State<Arc<ApiState>>) -> Response {
    match serde_json::to_vec(&state.store.snapshot()) {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => Failure(ApiError::Internal(format!("encode snapshot: {e}"))).into_response(),
    }
}

async fn raft_append(
    State(state): State<Arc<ApiState>>,
    target: axum::extract::Query<cluster::Target>,
    Json(req): Json<openraft::raft::AppendEntriesRequest<crate::store::TypeConfig>>,
) -> Response {
    if let Err(r) = cluster::check_target(&state, &target) {
        return *r;
    }
    Json(state.store.raft().append_entries(req).await).into_response()
}

async fn raft_vote(
    State(state): State<Arc<ApiState>>,
    target: axum::extract::Query<cluster::Target>,
    Json(req): Json<openraft::raft::VoteRequest<crate::store::NodeId>>,
) -> Response {
    if let Err(r) = cluster::check_target(&state, &target) {
        return *r;
    }
    Json(state.store.raft().vote(req).await).into_response()
}

async fn raft_snapshot(
    State(state): State<Arc<ApiState>>,
    target: axum::extract::Query<cluster::Target>,
    Json(req): Json<openraft::raft::InstallSnapshotRequest<crate::store::TypeConfig>>,
) -> Response {
    if let Err(r) = cluster::check_target(&state, &target) {
        return *r;
    }
    Json(state.store.raft().install_snapshot(req).await).into_response()
}

fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
}

async fn dispatch(
    State(state): State<Arc<ApiState>>,
    Extension(principal): Extension<auth::Principal>,
    method: Method,
    headers: HeaderMap,
    req: HttpRequest,
) -> Response {
    let path = req.uri().path().to_string();
    if let Some((ns, name)) = exec_target(&path) {
        let (ns, name) = (ns.to_string(), name.to_string());
        if matches!(method, Method::GET | Method::POST) {
            return match proxy::pod_exec(&state, &ns, &name, req).await {
                Ok(r) => r,
                Err(e) => Failure(e).into_response(),
            };
        }
    }
    if let Some((ns, name)) = subresource_target(&path, "attach") {
        let (ns, name) = (ns.to_string(), name.to_string());
        if matches!(method, Method::GET | Method::POST) {
            return match proxy::pod_attach(&state, &ns, &name, req).await {
                Ok(r) => r,
                Err(e) => Failure(e).into_response(),
            };
        }
    }
    if let Some((ns, name)) = subresource_target(&path, "portforward") {
        let (ns, name) = (ns.to_string(), name.to_string());
        if matches!(method, Method::GET | Method::POST) {
            return match portforward::pod_portforward(&state, &ns, &name, req).await {
                Ok(r) => r,
                Err(e) => Failure(e).into_response(),
            };
        }
    }
    let query = req.uri().query().map(String::from);
    let body = match axum::body::to_bytes(req.into_body(), 64 * 1024 * 1024).await {
        Ok(b) => b,
        Err(e) => {
            return Failure(ApiError::BadRequest(format!("reading request body: {e}")))
                .into_response()
        }
    };
    let (manager, subresource) = write_manager(&headers, &path, query.as_deref());
    let (result, warned, audit) = warnings::scope(managers::scope(
        manager,
        subresource,
        serve(
            &state,
            &principal,
            &method,
            &headers,
            &path,
            query.as_deref(),
            body,
        ),
    ))
    .await;
    if method != Method::GET && path.starts_with("/apis/apiextensions.k8s.io/") {
        // a CRD written here serves its kind before the response returns
        customresources::sync(state.store.cache());
    }
    let mut r = match result {
        Ok(r) => r,
        Err(e) => {
            if e.code() >= 500 {
                tracing::warn!(%method, %path, error = %e, "request failed");
            }
            Failure(e).into_response()
        }
    };
    // kube-apiserver sends warnings with refusals too
    warnings::attach(&mut r, &warned);
    if !audit.0.is_empty() {
        r.extensions_mut().insert(audit);
    }
    r
}

/// The field manager of a request (its `fieldManager`, else its user
/// agent up to the first `/`) and the subresource it addresses.
fn write_manager(headers: &HeaderMap, path: &str, query: Option<&str>) -> (String, String) {
    let given = serde_urlencoded::from_str::<Vec<(String, String)>>(query.unwrap_or_default())
        .ok()
        .and_then(|q| q.into_iter().find(|(k, _)| k == "fieldManager"))
        .map(|(_, v)| v);
    let manager = given.filter(|m| !m.is_empty()).unwrap_or_else(|| {
        crate::api::managed::manager_from_user_agent(
            headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
        )
    });
    let sub = match request::parse_path(path) {
        Ok(request::Target::Resource { sub: Some(s), .. }) => s,
        _ => String::new(),
    };
    (manager, sub)
}

/// `(namespace, name)` of a `pods/{name}/{sub}` path.
fn subresource_target<'a>(path: &'a str, sub: &str) -> Option<(&'a str, &'a str)> {
    let rest = path.strip_prefix("/api/v1/namespaces/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [ns, "pods", name, s] if *s == sub => Some((ns, name)),
        _ => None,
    }
}

/// `(namespace, name)` of a `pods/{name}/exec` path.
fn exec_target(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/api/v1/namespaces/")?;
    let mut parts = rest.split('/');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some(ns), Some("pods"), Some(name), Some("exec"), None) => Some((ns, name)),
        _ => None,
    }
}

async fn serve(
    state: &ApiState,
    principal: &auth::Principal,
    method: &Method,
    headers: &HeaderMap,
    path: &str,
    query: Option<&str>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let target = request::parse_path(path)?;
    let (res, namespace, name, sub, watch_path) = match target {
        Target::GroupVersion { group, version } if *method == Method::GET => {
            return discovery::resource_list(&group, &version)
                .map(|v| json_response(StatusCode::OK, &v));
        }
        Target::Group { group } if *method == Method::GET => {
            return discovery::group(&group).map(|v| json_response(StatusCode::OK, &v));
        }
        Target::Resource {
            res,
            namespace,
            name,
            sub,
            watch_path,
        } => (res, namespace, name, sub, watch_path),
        _ => return Err(ApiError::MethodNotAllowed),
    };
    let p = Params::parse(query)?;
    let store = &state.store;
    // reads without a resourceVersion (and the reads behind every write)
    // see every write acknowledged before them, on whichever server: the
    // leader's commit index by ReadIndex, applied here. `resourceVersion`
    // given (e.g. 0): served from this server's cache as it is.
    let is_watch = *method == Method::GET && (p.is_watch() || watch_path);
    let rv_given = p.resource_version.as_deref().is_some_and(|v| !v.is_empty());
    let from_cache = is_watch || (*method == Method::GET && rv_given);
    if !from_cache {
        store.linearize().await.map_err(|e| {
            ApiError::Unavailable(format!("no consistent read is possible now: {e}"))
        })?;
    }
    let ns = namespace.as_deref();
    let ns_str = if res.namespaced {
        ns.unwrap_or("default")
    } else {
        ""
    };
    let ct = content_type(headers);
    if matches!(*method, Method::POST | Method::PUT | Method::PATCH) && !res.review {
        // keys given twice are lost in decoding: find them in the bytes
        let dups = crate::api::fields::duplicate_fields(&body);
        handlers::report_fields(
            res,
            p.field_validation()?,
            dups.into_iter()
                .map(crate::api::fields::FieldProblem::Duplicate)
                .collect(),
        )?;
    }
    let decoded = || request::decode_body(ct, &body);
    let render = table::negotiate(
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()),
        p.include_object.as_deref(),
    )?;
    // reads answer as the client asked: the objects, or a Table of them
    let shown = |v: Value| match &render {
        table::Render::Table { version, include } => table::render(res, v, version, *include),
        table::Render::Object | table::Render::Protobuf => v,
    };
    // objects go back in protobuf when the client asked for it first
    let reply = |code: StatusCode, v: &Value| match render {
        table::Render::Protobuf => protobuf::respond(code, v),
        _ => json_response(code, v),
    };
    let ok = |v: Value| Ok(reply(StatusCode::OK, &v));
    if res.review {
        return match (method.clone(), name.as_deref()) {
            (Method::POST, None) => Ok(reply(
                StatusCode::CREATED,
                &reviews::create(state, principal, res, ns, &decoded()?)?,
            )),
            _ => Err(ApiError::MethodNotAllowed),
        };
    }
    // admission of a write whose resulting object is `obj`
    let admit = |mut obj: Value| async move {
        admission::admit(state, principal, res, ns_str, &mut obj)
            .await
            .map(|_| obj)
    };

    match (method.clone(), name.as_deref(), sub.as_deref()) {
        (Method::GET, None, None) if p.is_watch() || watch_path => {
            // a version this server has not applied yet (the client came
            // from a server further ahead): wait for it, about 3 s
            if let Some(rv) = p.revision()? {
                if rv > store.cache().revision() {
                    handlers::wait_for_revision(store, rv).await?;
                }
            }
            let body = watch::watch(
                store,
                res,
                ns,
                &p,
                state.bookmark_interval,
                state.shutdown.clone(),
                render.clone(),
            )?;
            Ok(Response::builder()
                .status(StatusCode::OK)
                .header(
                    header::CONTENT_TYPE,
                    if render == table::Render::Protobuf {
                        "application/vnd.kubernetes.protobuf;stream=watch"
                    } else {
                        "application/json"
                    },
                )
                .header(header::CACHE_CONTROL, "no-cache, private")
                .body(body)
                .map_err(|e| ApiError::Internal(e.to_string()))?)
        }
        (Method::GET, None, None) => {
            let list = handlers::list(store, res, ns, &p).await?;
            match render {
                // JSON straight from the cache's objects
                table::Render::Object => Ok((StatusCode::OK, Json(&list)).into_response()),
                _ => ok(shown(list.into_value())),
            }
        }
        (Method::POST, None, None) => {
            let obj = admit(decoded()?).await?;
            let created = handlers::create(store, res, ns, obj, &p).await?;
            Ok(reply(StatusCode::CREATED, &created))
        }
        (Method::DELETE, None, None) => {
            let b = if body.is_empty() {
                None
            } else {
                Some(decoded()?)
            };
            let opts = DeleteOptions::from_body(b.as_ref(), &p)?;
            ok(handlers::delete_collection(store, res, ns, &p, &opts).await?)
        }
        (Method::GET, Some(n), None) => ok(shown(handlers::get(store, res, ns_str, n)?)),
        (Method::PUT, Some(n), None) => {
            let obj = admit(decoded()?).await?;
            Ok(reply(
                StatusCode::OK,
                &*handlers::update(store, res, ns_str, n, obj, Part::Main, &p).await?,
            ))
        }
        (Method::PATCH, Some(n), None) | (Method::PATCH, Some(n), Some("status")) => {
            let part = if sub.is_some() {
                Part::Status
            } else {
                Part::Main
            };
            if part == Part::Status && !res.status {
                return Err(ApiError::NotFound {
                    resource: format!("{}/status", res.plural),
                    name: n.into(),
                });
            }
            let ty = PatchType::from_content_type(ct)?;
            let patch_body = request::decode_body(
                if ty == PatchType::Apply {
                    "yaml"
                } else {
                    "json"
                },
                &body,
            )?;
            if res.group == "rbac.authorization.k8s.io" {
                // escalation is judged on the object the patch makes
                let current = handlers::get(store, res, ns_str, n)?;
                let schema = crate::api::schema::schemas().root(res);
                admit(handlers::apply_patch(&current, ty, &patch_body, schema)?).await?;
            } else {
                admit(patch_body.clone()).await?;
            }
            let (v, created) = handlers::patch(
                store,
                res,
                ns_str,
                n,
                handlers::PatchBody {
                    ty,
                    body: patch_body,
                },
                part,
                &p,
            )
            .await?;
            Ok(reply(
                if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                },
                &v,
            ))
        }
        (Method::DELETE, Some(n), None) => {
            let b = if body.is_empty() {
                None
            } else {
                Some(decoded()?)
            };
            let opts = DeleteOptions::from_body(b.as_ref(), &p)?;
            if res.kind == "CustomResourceDefinition" && !opts.dry_run {
                // its custom resources go first, as kube-apiserver's
                // customresourcecleanup finalizer has them go
                let stored = crate::api::crd::all()
                    .into_iter()
                    .filter(|c| c.crd == n)
                    .map(|c| c.res)
                    .next();
                if let Some(cr) = stored {
                    handlers::delete_collection(
                        store,
                        cr,
                        None,
                        &request::Params::default(),
                        &DeleteOptions::default(),
                    )
                    .await?;
                }
            }
            Ok(reply(
                StatusCode::OK,
                &*handlers::delete(store, res, ns_str, n, &opts).await?,
            ))
        }
        (Method::GET, Some(n), Some("status")) if res.status => {
            ok(handlers::get(store, res, ns_str, n)?)
        }
        (Method::PUT, Some(n), Some("status")) if res.status => {
            let obj = admit(decoded()?).await?;
            Ok(reply(
                StatusCode::OK,
                &*handlers::update(store, res, ns_str, n, obj, Part::Status, &p).await?,
            ))
        }
        (Method::POST, Some(n), Some("token")) if res.kind == "ServiceAccount" => {
            let req = admit(decoded()?).await?;
            Ok(reply(
                StatusCode::CREATED,
                &serviceaccounts::token_request(state, ns_str, n, &req)?,
            ))
        }
        (Method::GET, Some(n), Some("scale")) if res.scale => ok(handlers::scale_of(
            res,
            &handlers::get(store, res, ns_str, n)?,
        )),
        (Method::PUT, Some(n), Some("scale")) if res.scale => {
            let scale = decoded()?;
            ok(
                handlers::update_scale(
                    store,
                    res,
                    ns_str,
                    n,
                    p.is_dry_run(),
                    |_| Ok(scale.clone()),
                )
                .await?,
            )
        }
        (Method::PATCH, Some(n), Some("scale")) if res.scale => {
            let ty = PatchType::from_content_type(ct)?;
            let patch_body = decoded()?;
            ok(
                handlers::update_scale(store, res, ns_str, n, p.is_dry_run(), |current| {
                    let mut s = handlers::apply_patch(current, ty, &patch_body, None)?;
                    if patch_body.pointer("/metadata/resourceVersion").is_none() {
                        s["metadata"]["resourceVersion"] = Value::String(String::new());
                    }
                    Ok(s)
                })
                .await?,
            )
        }
        (Method::GET, Some(n), Some("log")) if res.kind == "Pod" => {
            proxy::pod_logs(state, ns_str, n, query).await
        }
        (Method::POST, Some(n), Some("eviction")) if res.kind == "Pod" => Ok(reply(
            StatusCode::CREATED,
            &eviction::evict(store, res, ns_str, n, &decoded()?, &p).await?,
        )),
        (Method::POST, Some(n), Some("binding")) if res.kind == "Pod" => Ok(reply(
            StatusCode::CREATED,
            &handlers::bind(store, ns_str, n, decoded()?).await?,
        )),
        (Method::PUT, Some(n), Some("finalize")) if res.kind == "Namespace" => Ok(reply(
            StatusCode::OK,
            &*handlers::finalize_namespace(store, n, decoded()?).await?,
        )),
        (_, Some(n), Some(s))
            if !matches!(
                s,
                "status" | "scale" | "binding" | "eviction" | "finalize" | "log" | "token"
            ) =>
        {
            Err(ApiError::NotFound {
                resource: format!("{}/{s}", res.plural),
                name: n.into(),
            })
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}
