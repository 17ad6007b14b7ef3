//! Every request's identity and permission, in kube-apiserver's order:
//! authenticate (a client certificate verified during the TLS handshake,
//! or a ServiceAccount token), impersonate (when asked and allowed), then
//! authorize (`system:masters`, the Node authorizer, RBAC). The outcome is
//! attached to the request for admission and the audit log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::api::resources;
use crate::api::ApiError;
use crate::auth::attributes::{request_target, Attributes, Target};
use crate::auth::token::{Claims, Signer};
use crate::auth::{node, rbac, Decision, UserInfo};
use crate::store::Cache;
use crate::tls::serve::Peer;
use crate::tls::Ca;

use super::{ApiState, Failure};

/// The cluster's secrets for authentication: the token signing key and
/// the CAs that issue node certificates.
pub struct Security {
    pub signer: Signer,
    pub server_ca: Ca,
    pub client_ca: Ca,
    /// The secret part of the server's join token (`K10…::server:SECRET`).
    pub join_secret: String,
    /// Tokens whose signature was already checked, by their SHA-256: the
    /// expensive part of a ServiceAccount token is verified once, while
    /// expiry and the ServiceAccount and pod are checked on every request.
    verified: Mutex<HashMap<String, Claims>>,
}

/// Most verified tokens remembered before the memory is cleared.
const VERIFIED_MAX: usize = 4096;

impl Security {
    pub fn new(signer: Signer, server_ca: Ca, client_ca: Ca, join_secret: String) -> Self {
        Self {
            signer,
            server_ca,
            client_ca,
            join_secret,
            verified: Mutex::default(),
        }
    }

    fn verify(&self, token: &str) -> Result<Claims, String> {
        let key = crate::tls::pki::sha256_hex(token.as_bytes());
        if let Some(c) = self
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(c.clone());
        }
        let claims = self.signer.verify(token).map_err(|e| e.to_string())?;
        let mut cache = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= VERIFIED_MAX {
            cache.clear();
        }
        cache.insert(key, claims.clone());
        Ok(claims)
    }
}

/// Who a request runs as, attached to it once authorized.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user: UserInfo,
    /// The authenticated user, when it impersonates `user`.
    pub impersonator: Option<UserInfo>,
    pub attributes: Attributes,
}

/// Pods deleted longer ago than this invalidate their tokens (kube-apiserver's grace).
const DELETED_POD_GRACE_SECS: i64 = 60;

/// The user of a ServiceAccount token, if it is valid now and its
/// ServiceAccount (and bound pod, secret or node) still exists.
pub fn authenticate_token(
    security: &Security,
    cache: &Cache,
    token: &str,
) -> Result<UserInfo, String> {
    let claims = security.verify(token)?;
    let now = chrono::Utc::now().timestamp();
    if claims.exp <= now || claims.nbf > now {
        return Err("token is expired".into());
    }
    let k = &claims.kubernetes;
    let ns = &k.namespace;
    let lookup = |plural: &str, ns: &str, name: &str| {
        let res = resources::lookup(plural).expect("served kind");
        cache.get(&res.key(ns, name))
    };
    let uid_of = |o: &Value| {
        o["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let sa = lookup("serviceaccounts", ns, &k.serviceaccount.name).ok_or_else(|| {
        format!(
            "service account {ns}/{} has been deleted",
            k.serviceaccount.name
        )
    })?;
    if uid_of(&sa) != k.serviceaccount.uid {
        return Err(format!(
            "service account UID ({}) does not match claim ({})",
            uid_of(&sa),
            k.serviceaccount.uid
        ));
    }
    let mut user = UserInfo::new(
        crate::auth::service_account_user(ns, &k.serviceaccount.name),
        &[
            crate::auth::SERVICE_ACCOUNTS,
            &format!("system:serviceaccounts:{ns}"),
        ],
    );
    user.uid = k.serviceaccount.uid.clone();
    let mut extra = |key: &str, v: &str| {
        user.extra.insert(
            format!("authentication.kubernetes.io/{key}"),
            vec![v.to_string()],
        );
    };
    extra("credential-id", &format!("JTI={}", claims.jti));
    if let Some(p) = &k.pod {
        let pod = lookup("pods", ns, &p.name)
            .ok_or_else(|| format!("pod {ns}/{} has been deleted", p.name))?;
        if uid_of(&pod) != p.uid {
            return Err(format!(
                "pod {ns}/{} has been deleted and recreated",
                p.name
            ));
        }
        if let Some(ts) = pod["metadata"]["deletionTimestamp"].as_str() {
            let deleted = chrono::DateTime::parse_from_rfc3339(ts)
                .map(|t| t.timestamp())
                .unwrap_or(now);
            if deleted < now - DELETED_POD_GRACE_SECS {
                return Err("token has been invalidated: its pod was deleted".into());
            }
        }
        extra("pod-name", &p.name);
        extra("pod-uid", &p.uid);
    }
    if let Some(s) = &k.secret {
        let secret = lookup("secrets", ns, &s.name)
            .ok_or_else(|| format!("secret {ns}/{} has been deleted", s.name))?;
        if uid_of(&secret) != s.uid {
            return Err(format!(
                "secret {ns}/{} has been deleted and recreated",
                s.name
            ));
        }
    }
    if let Some(n) = &k.node {
        if let Some(node) = lookup("nodes", "", &n.name) {
            if uid_of(&node) != n.uid && k.pod.is_none() {
                return Err(format!("node {} has been deleted and recreated", n.name));
            }
        } else if k.pod.is_none() {
            return Err(format!("node {} has been deleted", n.name));
        }
        extra("node-name", &n.name);
        extra("node-uid", &n.uid);
    }
    Ok(user)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The authenticated user of a request.
pub fn authenticate(
    state: &ApiState,
    peer: Option<&Peer>,
    headers: &HeaderMap,
) -> Result<UserInfo, ApiError> {
    if let Some(info) = peer.and_then(|p| p.cert.as_ref()) {
        if !info.common_name.is_empty() {
            return Ok(UserInfo::from_cert(&info.common_name, &info.organizations));
        }
    }
    match bearer(headers) {
        Some(token) => {
            authenticate_token(&state.security, state.store.cache(), token).map_err(|e| {
                tracing::debug!(error = %e, "token rejected");
                ApiError::Unauthorized
            })
        }
        None => Err(ApiError::Unauthorized),
    }
}

/// RBAC objects and the pod graph, read from the store's cache (and the
/// Node authorizer's graph, when there is one).
pub struct CacheView<'a>(pub &'a Cache, pub Option<&'a super::graph::NodeGraph>);

impl<'a> CacheView<'a> {
    /// The view of a running API server.
    pub fn of(state: &'a ApiState) -> Self {
        CacheView(state.store.cache(), Some(&state.graph))
    }
}

impl CacheView<'_> {
    fn all(&self, plural: &str, ns: Option<&str>) -> Vec<Arc<Value>> {
        let res = resources::lookup(plural).expect("served kind");
        self.0
            .list(&res.prefix(ns), None, None, None, &|_| true)
            .map(|p| p.items)
            .unwrap_or_default()
    }

    fn one(&self, plural: &str, ns: &str, name: &str) -> Option<Arc<Value>> {
        let res = resources::lookup(plural).expect("served kind");
        self.0.get(&res.key(ns, name))
    }
}

impl rbac::Source for CacheView<'_> {
    fn cluster_role_bindings(&self) -> Vec<Arc<Value>> {
        self.all("clusterrolebindings", None)
    }
    fn role_bindings(&self, namespace: &str) -> Vec<Arc<Value>> {
        self.all("rolebindings", Some(namespace))
    }
    fn cluster_role(&self, name: &str) -> Option<Arc<Value>> {
        self.one("clusterroles", "", name)
    }
    fn role(&self, namespace: &str, name: &str) -> Option<Arc<Value>> {
        self.one("roles", namespace, name)
    }
}

impl node::Graph for CacheView<'_> {
    fn node_uses(&self, node: &str, namespace: &str, kind: node::RefKind, name: &str) -> bool {
        if self.1.is_some_and(|g| g.uses(node, namespace, kind, name)) {
            return true;
        }
        // the graph may be a moment behind the cache: ask the pods themselves
        let res = resources::lookup("pods").expect("pods are served");
        let pods = self
            .0
            .list(&res.prefix(Some(namespace)), None, None, None, &|p| {
                p["spec"]["nodeName"].as_str() == Some(node)
            })
            .map(|p| p.items)
            .unwrap_or_default();
        node::pods_use(&pods, kind, name)
    }
    fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Value>> {
        self.one("pods", namespace, name)
    }
    fn ingress_tls_secret(&self, namespace: &str, name: &str) -> bool {
        self.all("ingresses", Some(namespace)).iter().any(|i| {
            i["spec"]["tls"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["secretName"].as_str() == Some(name)))
        })
    }
}

/// The authorizer chain: `system:masters`, the Raft peers' paths, the
/// Node authorizer, then RBAC.
pub fn authorize(view: &CacheView, a: &Attributes) -> Decision {
    if let Target::NonResource { path } = &a.target {
        if path.starts_with("/raft/") {
            return if a.user.in_group(crate::auth::PEERS) {
                Decision::Allow
            } else {
                Decision::Deny("only the cluster's servers may call its Raft endpoints".into())
            };
        }
    }
    if a.user.is_master() {
        return Decision::Allow;
    }
    if let Some(n) = a.user.node_name() {
        match node::authorize(n, a, view) {
            Decision::Allow => return Decision::Allow,
            Decision::Deny(reason) => return Decision::Deny(reason),
            Decision::NoOpinion => {}
        }
    }
    rbac::authorize(view, a)
}

/// The 403 for a denied request, worded as kube-apiserver words it.
pub fn forbidden(a: &Attributes, reason: &str) -> ApiError {
    let (resource, name, detail) = a.forbidden_message(reason);
    ApiError::Forbidden {
        resource,
        name,
        detail,
    }
}

/// Apply `Impersonate-*` headers: the impersonated user, once the
/// authenticated one is allowed to impersonate each part of it.
fn impersonate(
    view: &CacheView,
    user: &UserInfo,
    headers: &HeaderMap,
) -> Result<Option<UserInfo>, ApiError> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok().map(String::from))
            .collect()
    };
    let target_user = values("impersonate-user").into_iter().next();
    let groups = values("impersonate-group");
    let uid = values("impersonate-uid").into_iter().next();
    let extras: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(k, v)| {
            let key = k.as_str().strip_prefix("impersonate-extra-")?;
            Some((key.to_string(), v.to_str().ok()?.to_string()))
        })
        .collect();
    let Some(name) = target_user else {
        if !groups.is_empty() || uid.is_some() || !extras.is_empty() {
            return Err(ApiError::BadRequest(
                "requested impersonation without a user: Impersonate-User is required".into(),
            ));
        }
        return Ok(None);
    };
    let check = |group: &str, resource: &str, ns: &str, name: &str| -> Result<(), ApiError> {
        let a = Attributes {
            user: user.clone(),
            verb: "impersonate".into(),
            target: Target::Resource {
                group: group.into(),
                version: String::new(),
                resource: resource.into(),
                subresource: String::new(),
                namespace: ns.into(),
                name: name.into(),
            },
        };
        match authorize(view, &a) {
            Decision::Allow => Ok(()),
            Decision::Deny(r) => Err(forbidden(&a, &r)),
            Decision::NoOpinion => Err(forbidden(&a, "")),
        }
    };
    let mut out = UserInfo {
        name: name.clone(),
        ..Default::default()
    };
    match crate::auth::UserInfo::new(name.clone(), &[]).service_account() {
        Some((ns, sa)) => {
            check("", "serviceaccounts", ns, sa)?;
            if groups.is_empty() {
                out.groups = vec![
                    crate::auth::SERVICE_ACCOUNTS.to_string(),
                    format!("system:serviceaccounts:{ns}"),
                ];
            }
        }
        None => check("", "users", "", &name)?,
    }
    for g in &groups {
        check("", "groups", "", g)?;
        out.groups.push(g.clone());
    }
    if let Some(u) = uid {
        check("authentication.k8s.io", "uids", "", &u)?;
        out.uid = u;
    }
    for (k, v) in extras {
        check("authentication.k8s.io", &format!("userextras/{k}"), "", &v)?;
        out.extra.entry(k).or_default().push(v);
    }
    if name != "system:anonymous" && !out.groups.iter().any(|g| g == crate::auth::AUTHENTICATED) {
        out.groups.push(crate::auth::AUTHENTICATED.to_string());
    }
    Ok(Some(out))
}

/// The middleware in front of every authenticated route.
pub async fn guard(State(state): State<Arc<ApiState>>, mut req: Request, next: Next) -> Response {
    let started = chrono::Utc::now();
    let peer = req.extensions().get::<Peer>().cloned();
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(String::from);
    let (verb, target) = request_target(&method, &path, query.as_deref());
    // a denial carries the user it was for (for the audit log)
    type Denied = Box<(ApiError, Option<UserInfo>)>;
    let outcome = (|| -> Result<Principal, Denied> {
        let authenticated =
            authenticate(&state, peer.as_ref(), req.headers()).map_err(|e| Box::new((e, None)))?;
        let view = CacheView::of(&state);
        let impersonated = impersonate(&view, &authenticated, req.headers())
            .map_err(|e| Box::new((e, Some(authenticated.clone()))))?;
        let (user, impersonator) = match impersonated {
            Some(u) => (u, Some(authenticated)),
            None => (authenticated, None),
        };
        let attributes = Attributes {
            user: user.clone(),
            verb: verb.clone(),
            target: target.clone(),
        };
        match authorize(&view, &attributes) {
            Decision::Allow => Ok(Principal {
                user,
                impersonator,
                attributes,
            }),
            Decision::Deny(reason) => Err(Box::new((forbidden(&attributes, &reason), Some(user)))),
            Decision::NoOpinion => Err(Box::new((forbidden(&attributes, ""), Some(user)))),
        }
    })();
    let audit = state.audit.clone();
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let uri = req.uri().to_string();
    let source = peer.map(|p| p.addr.ip().to_string()).unwrap_or_default();
    match outcome {
        Ok(principal) => {
            req.extensions_mut().insert(principal.clone());
            let resp = next.run(req).await;
            if let Some(log) = audit {
                log.record(super::audit::Entry {
                    verb,
                    uri,
                    user: Some(
                        principal
                            .impersonator
                            .clone()
                            .unwrap_or(principal.user.clone()),
                    ),
                    impersonated: principal
                        .impersonator
                        .as_ref()
                        .map(|_| principal.user.clone()),
                    target,
                    source,
                    user_agent,
                    code: resp.status().as_u16(),
                    decision: "allow",
                    started,
                    annotations: resp
                        .extensions()
                        .get::<super::warnings::AuditAnnotations>()
                        .map(|a| a.0.clone())
                        .unwrap_or_default(),
                });
            }
            resp
        }
        Err(denied) => {
            let (err, user) = *denied;
            let resp = Failure(err).into_response();
            if let Some(log) = audit {
                log.record(super::audit::Entry {
                    verb,
                    uri,
                    user,
                    impersonated: None,
                    target,
                    source,
                    user_agent,
                    code: resp.status().as_u16(),
                    decision: "forbid",
                    started,
                    annotations: Vec::new(),
                });
            }
            resp
        }
    }
}
