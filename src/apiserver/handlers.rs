//! The verbs: get, list, create, update, patch, delete, deletecollection and
//! the status, scale, binding and finalize subresources. Every write goes
//! through [`Store::write`]; reads come from the watch cache.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

use crate::api::fields::{self, FieldProblem, FieldValidation};
use crate::api::meta::{self, finalizers, is_deleting};
use crate::api::resources::{self, Resource};
use crate::api::selector::{FieldSelector, LabelSelector};
use crate::api::validation::{self, prepare};
use crate::api::ApiError;
use crate::store::types::revision_of;
use crate::store::{Precondition, Rejection, Request, Store, StoreError};

use super::request::Params;

/// How many times an update is retried after losing a race it did not ask to lose.
const UPDATE_RETRIES: usize = 16;

/// 409 Conflict: the object changed since the revision the request was based on.
fn conflict(res: &Resource, name: &str) -> ApiError {
    ApiError::Conflict {
        resource: res.qualified_plural(),
        name: name.into(),
        detail: "the object has been modified; please apply your changes to the latest version and try again".into(),
    }
}

/// Map a store failure on `res`/`name` (in `namespace`) to an API error.
pub fn store_error(res: &Resource, namespace: Option<&str>, name: &str, e: StoreError) -> ApiError {
    let resource = res.qualified_plural();
    match e {
        StoreError::Rejected(Rejection::AlreadyExists) => ApiError::AlreadyExists { resource, name: name.into() },
        StoreError::Rejected(Rejection::NotFound) => ApiError::NotFound { resource, name: name.into() },
        StoreError::Rejected(Rejection::Conflict { .. }) => conflict(res, name),
        StoreError::Rejected(Rejection::UidMismatch { current }) => ApiError::Conflict {
            resource,
            name: name.into(),
            detail: format!("precondition failed: UID in precondition does not match the UID in record: {current}"),
        },
        StoreError::Rejected(Rejection::NamespaceNotFound) => ApiError::NotFound {
            resource: "namespaces".into(),
            name: namespace.unwrap_or_default().into(),
        },
        StoreError::Rejected(Rejection::NamespaceTerminating) => ApiError::Forbidden {
            resource,
            name: name.into(),
            detail: format!(
                "unable to create new content in namespace {} because it is being terminated",
                namespace.unwrap_or_default()
            ),
        },
        StoreError::Rejected(Rejection::InTxn { .. }) => ApiError::Conflict {
            resource,
            name: name.into(),
            detail: "an address or port it was given was taken meanwhile; please try again".into(),
        },
        StoreError::NotLeader { leader, .. } => ApiError::Unavailable(format!(
            "this server is not the leader; retry at {}",
            leader.unwrap_or_else(|| "the leader once one is elected".into())
        )),
        StoreError::NoLeader(m) => ApiError::Unavailable(format!(
            "the store has no leader to write to; retry later ({m})"
        )),
        StoreError::Indeterminate(m) => ApiError::Timeout(format!(
            "request did not complete; the write may or may not have been applied ({m})"
        )),
        other => ApiError::Internal(format!("storage: {other}")),
    }
}

fn not_found(res: &Resource, name: &str) -> ApiError {
    ApiError::NotFound {
        resource: res.qualified_plural(),
        name: name.into(),
    }
}

/// The selectors of a list or watch, as one filter.
pub struct Filter {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    pub fn from_params(res: &Resource, p: &Params) -> Result<Self, ApiError> {
        let labels = LabelSelector::parse(p.label_selector.as_deref().unwrap_or_default())
            .map_err(|e| ApiError::BadRequest(format!("unable to parse requirement: {e}")))?;
        let fields =
            FieldSelector::parse(p.field_selector.as_deref().unwrap_or_default(), res.kind)
                .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        Ok(Self { labels, fields })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches_object(obj) && self.fields.matches(obj)
    }
}

/// The continue token: the revision the first page was read at and the last key returned.
fn encode_continue(revision: u64, key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"rv": revision, "start": key}).to_string())
}

fn decode_continue(token: &str) -> Result<(u64, String), ApiError> {
    let bad = || ApiError::BadRequest(format!("continue key is not valid: {token:?}"));
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    Ok((
        v["rv"].as_u64().ok_or_else(bad)?,
        v["start"].as_str().ok_or_else(bad)?.to_string(),
    ))
}

/// Wait (up to 3 s, as kube-apiserver does) until the store has reached `revision`.
pub async fn wait_for_revision(store: &Store, revision: u64) -> Result<(), ApiError> {
    let mut rx = store.cache().subscribe();
    let wait = async {
        while *rx.borrow_and_update() < revision {
            if rx.changed().await.is_err() {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(3), wait)
        .await
        .map_err(|_| {
            ApiError::Timeout(format!(
                "Too large resource version: {revision}, current: {}",
                store.cache().revision()
            ))
        })
}

/// LIST: one page of a collection.
pub async fn list(
    store: &Store,
    res: &Resource,
    ns: Option<&str>,
    p: &Params,
) -> Result<List, ApiError> {
    let filter = Filter::from_params(res, p)?;
    let prefix = res.prefix(ns);
    let (at, after) = match p.continue_token.as_deref().filter(|t| !t.is_empty()) {
        Some(token) => {
            let (rv, key) = decode_continue(token)?;
            if !key.starts_with(&prefix) {
                return Err(ApiError::BadRequest(
                    "continue key does not belong to this list".into(),
                ));
            }
            (Some(rv), Some(key))
        }
        None => {
            let at = match (p.revision()?, p.resource_version_match.as_deref()) {
                (Some(rv), Some("Exact")) => Some(rv),
                (Some(rv), _) => {
                    wait_for_revision(store, rv).await?;
                    None
                }
                (None, _) => None,
            };
            (at, None)
        }
    };
    let page = store
        .cache()
        .list(&prefix, after.as_deref(), at, p.limit, &|o| filter.matches(o))
        .map_err(|e| {
            if after.is_some() {
                ApiError::Expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.".into())
            } else {
                ApiError::Expired(e.to_string())
            }
        })?;
    let mut metadata = json!({"resourceVersion": page.revision.to_string()});
    if let Some(key) = page.continue_after {
        metadata["continue"] = json!(encode_continue(page.revision, &key));
    }
    Ok(List {
        kind: format!("{}List", res.kind),
        api_version: res.api_version(),
        metadata,
        items: page.items,
    })
}

/// A list's answer, holding the cache's objects: serialised from them as
/// they are, where a `Value` of the list would copy every item first.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct List {
    kind: String,
    api_version: String,
    metadata: Value,
    #[serde(serialize_with = "items")]
    items: Vec<std::sync::Arc<Value>>,
}

impl List {
    /// The list as one value (to render it as a Table or in protobuf).
    pub fn into_value(self) -> Value {
        // strings and JSON values only: serialising cannot fail
        serde_json::to_value(&self).unwrap_or_default()
    }
}

fn items<S: serde::Serializer>(items: &[std::sync::Arc<Value>], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(items.iter().map(|o| o.as_ref()))
}

/// GET one object.
pub fn get(store: &Store, res: &Resource, ns: &str, name: &str) -> Result<Value, ApiError> {
    store
        .cache()
        .get(&res.key(ns, name))
        .map(|o| (*o).clone())
        .ok_or_else(|| not_found(res, name))
}

/// Kinds whose status a create request cannot set (their status subresource owns it).
fn create_resets_status(res: &Resource) -> bool {
    res.status && !matches!(res.kind, "Node" | "Namespace")
}

/// Report `problems` with a request's fields as `mode` says: an error for
/// `Strict`, warnings for `Warn`.
pub fn report_fields(
    res: &Resource,
    mode: FieldValidation,
    problems: Vec<FieldProblem>,
) -> Result<(), ApiError> {
    match mode {
        _ if problems.is_empty() => Ok(()),
        FieldValidation::Strict => Err(fields::strict_error(res.kind, res.version, &problems)),
        FieldValidation::Warn => {
            problems
                .iter()
                .for_each(|p| super::warnings::add(p.to_string()));
            Ok(())
        }
        FieldValidation::Ignore => Ok(()),
    }
}

/// Check a request object for fields its kind does not declare.
fn check_fields(res: &Resource, obj: &Value, p: &Params) -> Result<(), ApiError> {
    let mode = p.field_validation()?;
    if mode == FieldValidation::Ignore {
        return Ok(());
    }
    if let Some(custom) = crate::api::crd::of(res) {
        let unknown = crate::api::crd::unknown_fields(&custom, obj);
        return report_fields(
            res,
            mode,
            unknown.into_iter().map(FieldProblem::Unknown).collect(),
        );
    }
    let s = crate::api::schema::schemas();
    let Some(root) = s.root(res) else {
        return Ok(());
    };
    let unknown = fields::unknown_fields(&s.definitions, &s.definitions[root], obj);
    report_fields(
        res,
        mode,
        unknown.into_iter().map(FieldProblem::Unknown).collect(),
    )
}

/// CREATE. Returns the stored object.
pub async fn create(
    store: &Store,
    res: &Resource,
    ns: Option<&str>,
    mut obj: Value,
    p: &Params,
) -> Result<Arc<Value>, ApiError> {
    check_type(res, &mut obj)?;
    check_fields(res, &obj, p)?;
    let namespace = if res.namespaced {
        let path_ns = ns.unwrap_or("default");
        match meta::namespace(&obj) {
            "" => {}
            body_ns if body_ns != path_ns => {
                return Err(ApiError::BadRequest(
                    "the namespace of the provided object does not match the namespace sent on the request".into(),
                ))
            }
            _ => {}
        }
        Some(path_ns.to_string())
    } else {
        None
    };
    let m = meta::meta_mut(&mut obj);
    if let Some(ns) = &namespace {
        m.insert("namespace".into(), json!(ns));
    } else {
        m.remove("namespace");
    }
    let has_name = m
        .get("name")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    if !has_name {
        if let Some(g) = m
            .get("generateName")
            .and_then(Value::as_str)
            .filter(|g| !g.is_empty())
        {
            let name = format!("{g}{}", meta::random_suffix());
            m.insert("name".into(), json!(name));
        }
    }
    m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    m.insert("creationTimestamp".into(), json!(meta::now()));
    m.insert("generation".into(), json!(1));
    for k in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
    ] {
        m.remove(k);
    }
    if create_resets_status(res) {
        if let Some(o) = obj.as_object_mut() {
            o.remove("status");
        }
    }
    if res.kind == "Job" {
        validation::generate_job_selector(&mut obj);
    }
    let mut prepared = prepare(res, obj, None)?;
    super::managers::track(res, None, &mut prepared);
    let name = meta::name(&prepared).to_string();
    let prepared = Arc::new(prepared);
    for _ in 0..UPDATE_RETRIES {
        // shared with `prepared` unless allocations change it (a copy)
        let mut obj = prepared.clone();
        let extra = if allocates(res) {
            allocations(store, res, None, Arc::make_mut(&mut obj))?
        } else {
            Vec::new()
        };
        if p.is_dry_run() {
            return Ok(obj);
        }
        let req = Request::Put {
            key: res.key(namespace.as_deref().unwrap_or_default(), &name),
            object: obj,
            precondition: Precondition {
                exists: Some(false),
                namespace: if res.kind == "Namespace" {
                    None
                } else {
                    namespace.clone()
                },
                ..Default::default()
            },
        };
        match write_with(store, req, extra).await {
            Err(StoreError::Rejected(Rejection::InTxn { .. })) => continue,
            other => return other.map_err(|e| store_error(res, namespace.as_deref(), &name, e)),
        }
    }
    Err(conflict(res, &name))
}

/// Whether writes of `res` carry [`allocations`].
fn allocates(res: &Resource) -> bool {
    res.kind == "Service" && res.group.is_empty()
}

/// The writes that must land with a write of `new` (`old` on update): a
/// Service's cluster IP and node port records.
fn allocations(
    store: &Store,
    res: &Resource,
    old: Option<&Value>,
    new: &mut Value,
) -> Result<Vec<Request>, ApiError> {
    if allocates(res) {
        super::services::allocate(store.cache(), old, new)
    } else {
        Ok(Vec::new())
    }
}

/// The writes that must land with the removal of `old`.
fn releases(store: &Store, res: &Resource, old: &Value) -> Vec<Request> {
    if res.kind == "Service" && res.group.is_empty() {
        super::services::release(store.cache(), old)
    } else {
        Vec::new()
    }
}

/// Write `req` and the writes that go with it, all or nothing. A refusal of
/// `req` itself comes back as that refusal; a lost race on one of the extra
/// writes as [`Rejection::InTxn`] (the caller allocates again).
async fn write_with(
    store: &Store,
    req: Request,
    extra: Vec<Request>,
) -> Result<Arc<Value>, StoreError> {
    if extra.is_empty() {
        return store.write(req).await;
    }
    let mut reqs = vec![req];
    reqs.extend(extra);
    match store.txn(reqs).await {
        Ok(mut out) => Ok(out.swap_remove(0)),
        Err(StoreError::Rejected(Rejection::InTxn {
            index: 0,
            rejection,
        })) => Err(StoreError::Rejected(*rejection)),
        Err(e) => Err(e),
    }
}

/// An object's `apiVersion`/`kind` must name the resource it is sent to (filled in when absent).
fn check_type(res: &Resource, obj: &mut Value) -> Result<(), ApiError> {
    let Some(o) = obj.as_object_mut() else {
        return Err(ApiError::BadRequest(
            "the request body must be a JSON object".into(),
        ));
    };
    let av = o
        .get("apiVersion")
        .and_then(Value::as_str)
        .map(String::from);
    let kind = o.get("kind").and_then(Value::as_str).map(String::from);
    if av.as_deref().is_some_and(|a| a != res.api_version())
        || kind.as_deref().is_some_and(|k| k != res.kind)
    {
        return Err(ApiError::BadRequest(format!(
            "the API version in the data ({}) does not match the expected API version ({}) or kind ({}) does not match {}",
            av.unwrap_or_default(),
            res.api_version(),
            kind.unwrap_or_default(),
            res.kind
        )));
    }
    o.insert("apiVersion".into(), json!(res.api_version()));
    o.insert("kind".into(), json!(res.kind));
    Ok(())
}

/// Which part of an object an update writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The main resource: everything but status (for kinds with a status subresource).
    Main,
    /// The `/status` subresource: status only.
    Status,
    /// A server-side change made by the API server itself (binding, scale, finalize).
    System,
}

/// Build the object to store from the old one and the client's candidate.
fn merge_update(
    res: &Resource,
    old: &Value,
    mut new: Value,
    part: Part,
) -> Result<Value, ApiError> {
    check_type(res, &mut new)?;
    if part == Part::Status {
        let mut merged = old.clone();
        merged["status"] = new.get("status").cloned().unwrap_or(Value::Null);
        return Ok(merged);
    }
    let name = meta::name(old).to_string();
    let body_name = meta::name(&new);
    if !body_name.is_empty() && body_name != name {
        return Err(ApiError::BadRequest(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    let body_ns = meta::namespace(&new);
    if res.namespaced && !body_ns.is_empty() && body_ns != meta::namespace(old) {
        return Err(ApiError::BadRequest(
            "the namespace of the provided object does not match the namespace sent on the request"
                .into(),
        ));
    }
    if res.status && part == Part::Main {
        match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(o) = new.as_object_mut() {
                    o.remove("status");
                }
            }
        }
    }
    let old_meta = old.get("metadata").cloned().unwrap_or(json!({}));
    let m = meta::meta_mut(&mut new);
    for k in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "generateName",
    ] {
        match old_meta.get(k) {
            Some(v) => {
                m.insert(k.into(), v.clone());
            }
            None => {
                m.remove(k);
            }
        }
    }
    Ok(new)
}

/// The guaranteed-update loop: read the current object, let `mutate` produce
/// the next one, validate, and write it conditioned on the revision read;
/// retry on a lost race unless the client pinned a resourceVersion.
pub async fn update_with<F>(
    store: &Store,
    res: &Resource,
    ns: &str,
    name: &str,
    part: Part,
    dry_run: bool,
    mutate: F,
) -> Result<Arc<Value>, ApiError>
where
    F: Fn(&Value) -> Result<Value, ApiError>,
{
    let key = res.key(ns, name);
    let ns_opt = res.namespaced.then_some(ns);
    for _ in 0..UPDATE_RETRIES {
        let old = store
            .cache()
            .get(&key)
            .ok_or_else(|| not_found(res, name))?;
        let candidate = mutate(&old)?;
        let pinned = match meta::resource_version(&candidate) {
            "" => None,
            s => Some(
                s.parse::<u64>()
                    .map_err(|_| ApiError::BadRequest(format!("invalid resourceVersion {s:?}")))?,
            ),
        };
        if let Some(rv) = pinned {
            if rv != revision_of(&old) {
                return Err(conflict(res, name));
            }
        }
        let merged = merge_update(res, &old, candidate, part)?;
        let mut new = prepare(
            res,
            merged,
            if part == Part::Main { Some(&old) } else { None },
        )?;
        if meta::spec_part(&new) != meta::spec_part(&old) {
            let generation = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                + 1;
            meta::meta_mut(&mut new).insert("generation".into(), json!(generation));
        }
        meta::meta_mut(&mut new).insert(
            "resourceVersion".into(),
            json!(meta::resource_version(&old)),
        );
        let precondition = Precondition {
            exists: Some(true),
            resource_version: Some(revision_of(&old)),
            ..Default::default()
        };
        if is_deleting(&new) && finalizers(&new).is_empty() && namespace_finalized(res, &new) {
            if dry_run {
                return Ok(Arc::new(new));
            }
            let req = Request::Delete {
                key: key.clone(),
                precondition,
            };
            match write_with(store, req, releases(store, res, &old)).await {
                Ok(v) => return Ok(v),
                Err(StoreError::Rejected(Rejection::Conflict { .. } | Rejection::InTxn { .. }))
                    if pinned.is_none() =>
                {
                    continue
                }
                Err(e) => return Err(store_error(res, ns_opt, name, e)),
            }
        }
        super::managers::track(res, Some(&old), &mut new);
        let extra = if part == Part::Main {
            allocations(store, res, Some(&old), &mut new)?
        } else {
            Vec::new()
        };
        if new == *old || dry_run {
            return Ok(Arc::new(new));
        }
        let req = Request::Put {
            key: key.clone(),
            object: Arc::new(new),
            precondition,
        };
        match write_with(store, req, extra).await {
            Ok(v) => return Ok(v),
            Err(StoreError::Rejected(Rejection::Conflict { .. } | Rejection::InTxn { .. }))
                if pinned.is_none() =>
            {
                continue
            }
            Err(e) => return Err(store_error(res, ns_opt, name, e)),
        }
    }
    Err(conflict(res, name))
}

/// A namespace is only removed once its `spec.finalizers` are cleared too.
fn namespace_finalized(res: &Resource, obj: &Value) -> bool {
    res.kind != "Namespace"
        || obj
            .pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_none_or(|a| a.is_empty())
}

/// UPDATE (PUT) of the object or its status.
pub async fn update(
    store: &Store,
    res: &Resource,
    ns: &str,
    name: &str,
    body: Value,
    part: Part,
    p: &Params,
) -> Result<Arc<Value>, ApiError> {
    check_fields(res, &body, p)?;
    update_with(store, res, ns, name, part, p.is_dry_run(), |_| {
        Ok(body.clone())
    })
    .await
}

/// The patch formats the API accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    /// Kubernetes' strategic merge patch (`api::smp`): lists merge by the
    /// keys the types declare.
    StrategicMerge,
    /// Server-side apply: creates the object when absent, then merges.
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Result<Self, ApiError> {
        let ct = ct.split(';').next().unwrap_or_default().trim();
        match ct {
            "application/json-patch+json" => Ok(Self::Json),
            "application/merge-patch+json" => Ok(Self::Merge),
            "application/strategic-merge-patch+json" => Ok(Self::StrategicMerge),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(Self::Apply),
            _ => Err(ApiError::UnsupportedMediaType(
                "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml".into(),
            )),
        }
    }
}

/// A patch as sent: its format and its document.
pub struct PatchBody {
    pub ty: PatchType,
    pub body: Value,
}

/// Apply a patch document to `doc`.
/// Apply a patch of type `ty` to `doc`, an object of schema `schema` (the
/// definition name of its kind, for strategic merge patches; `None` merges
/// as a JSON merge patch would).
pub fn apply_patch(
    doc: &Value,
    ty: PatchType,
    patch: &Value,
    schema: Option<&str>,
) -> Result<Value, ApiError> {
    let mut out = doc.clone();
    match ty {
        PatchType::StrategicMerge | PatchType::Apply => {
            out = crate::api::smp::apply(doc, patch, schema).map_err(|e| ApiError::Invalid {
                kind: doc["kind"].as_str().unwrap_or_default().to_string(),
                name: meta::name(doc).into(),
                errors: vec![crate::api::FieldError::invalid("patch", "", e.to_string())],
            })?;
        }
        PatchType::Json => {
            let p: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::BadRequest(format!("invalid JSON patch: {e}")))?;
            json_patch::patch(&mut out, &p).map_err(|e| ApiError::Invalid {
                kind: String::new(),
                name: meta::name(doc).into(),
                errors: vec![crate::api::FieldError::invalid("patch", "", e.to_string())],
            })?;
        }
        PatchType::Merge => {
            if !patch.is_object() {
                return Err(ApiError::BadRequest(
                    "a merge patch must be a JSON object".into(),
                ));
            }
            json_patch::merge(&mut out, patch);
        }
    }
    Ok(out)
}

/// PATCH of the object or its status.
pub async fn patch(
    store: &Store,
    res: &Resource,
    ns: &str,
    name: &str,
    patch: PatchBody,
    part: Part,
    p: &Params,
) -> Result<(Arc<Value>, bool), ApiError> {
    let PatchBody { ty, body } = patch;
    let schema = crate::api::schema::schemas().root(res);
    if ty == PatchType::Apply {
        if p.field_manager.as_deref().is_none_or(str::is_empty) {
            return Err(ApiError::BadRequest(
                "PATCH requests with apply content type require fieldManager".into(),
            ));
        }
        if !body.is_object() {
            return Err(ApiError::BadRequest(
                "an applied configuration must be an object".into(),
            ));
        }
        for (field, want) in [
            ("apiVersion", res.api_version()),
            ("kind", res.kind.to_string()),
        ] {
            if body.get(field).and_then(Value::as_str) != Some(want.as_str()) {
                return Err(ApiError::BadRequest(format!(
                    "an applied configuration must give {field} {want:?}"
                )));
            }
        }
    }
    let force = matches!(p.force.as_deref(), Some("true" | "1"));
    if ty == PatchType::Apply
        && part == Part::Main
        && store.cache().get(&res.key(ns, name)).is_none()
    {
        let mut obj = server_side_apply(res, None, &body, p, force)?;
        meta::meta_mut(&mut obj).insert("name".into(), json!(name));
        super::managers::mark_applied();
        let created = create(store, res, res.namespaced.then_some(ns), obj, p).await?;
        return Ok((created, true));
    }
    let updated = update_with(store, res, ns, name, part, p.is_dry_run(), |old| {
        let mut patched = if ty == PatchType::Apply {
            let applied = server_side_apply(res, Some(old), &body, p, force)?;
            super::managers::mark_applied();
            applied
        } else {
            apply_patch(old, ty, &body, schema)?
        };
        check_fields(res, &patched, p)?;
        // A resourceVersion only pins the write when the patch itself carries one.
        let pinned = body.pointer("/metadata/resourceVersion").is_some()
            || (ty == PatchType::Json
                && meta::resource_version(&patched) != meta::resource_version(old));
        if !pinned {
            meta::meta_mut(&mut patched).remove("resourceVersion");
        }
        Ok(patched)
    })
    .await?;
    Ok((updated, false))
}

/// A server-side apply of `config` to `live` by the request's manager.
fn server_side_apply(
    res: &Resource,
    live: Option<&Value>,
    config: &Value,
    p: &Params,
    force: bool,
) -> Result<Value, ApiError> {
    let (_, subresource) = super::managers::current().unwrap_or_default();
    let manager = p.field_manager.clone().unwrap_or_default();
    let (api_version, now) = (res.api_version(), meta::now());
    let w = crate::api::managed::Writer {
        manager: &manager,
        api_version: &api_version,
        subresource: &subresource,
        now: &now,
    };
    crate::api::managed::apply(
        live,
        config,
        crate::api::schema::schemas().root(res),
        &w,
        force,
    )
    .map_err(|c| ApiError::ApplyConflict {
        message: c.message(),
        causes: c.causes(),
    })
}

/// DELETE options (the body of a delete request).
#[derive(Debug, Default)]
pub struct DeleteOptions {
    pub uid: Option<String>,
    pub resource_version: Option<u64>,
    pub dry_run: bool,
    /// `gracePeriodSeconds`: 0 deletes a pod at once.
    pub grace_period: Option<i64>,
    /// `propagationPolicy`: what happens to the object's dependents.
    pub propagation: Propagation,
}

/// `propagationPolicy` of a delete.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Propagation {
    /// Delete the object now; the garbage collector deletes its dependents.
    #[default]
    Background,
    /// Keep the object (finalizer `foregroundDeletion`) until the garbage
    /// collector has deleted the dependents that block it.
    Foreground,
    /// Keep the object (finalizer `orphan`) until the garbage collector has
    /// removed it from its dependents' ownerReferences.
    Orphan,
}

impl Propagation {
    fn parse(s: &str) -> Result<Self, ApiError> {
        match s {
            "Background" => Ok(Propagation::Background),
            "Foreground" => Ok(Propagation::Foreground),
            "Orphan" => Ok(Propagation::Orphan),
            other => Err(ApiError::BadRequest(format!(
                "propagationPolicy {other:?} is not one of Background, Foreground, Orphan"
            ))),
        }
    }

    /// The finalizer that carries it out, if any.
    pub fn finalizer(self) -> Option<&'static str> {
        match self {
            Propagation::Background => None,
            Propagation::Foreground => Some("foregroundDeletion"),
            Propagation::Orphan => Some("orphan"),
        }
    }
}

/// The grace period of a graceful pod deletion, when one applies: the pod is
/// bound to a node and still running, so its agent must stop it first.
fn pod_grace_period(res: &Resource, pod: &Value, opts: &DeleteOptions) -> Option<i64> {
    if res.kind != "Pod" {
        return None;
    }
    let bound = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    let terminal = matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    );
    let grace = opts
        .grace_period
        .or_else(|| {
            pod.pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
        })
        .unwrap_or(30);
    (bound && !terminal && grace > 0).then_some(grace)
}

impl DeleteOptions {
    pub fn from_body(body: Option<&Value>, p: &Params) -> Result<Self, ApiError> {
        let mut o = DeleteOptions {
            dry_run: p.is_dry_run(),
            grace_period: p.grace_period_seconds,
            ..Default::default()
        };
        if let Some(policy) = &p.propagation_policy {
            o.propagation = Propagation::parse(policy)?;
        }
        if let Some(b) = body {
            if let Some(policy) = b.get("propagationPolicy").and_then(Value::as_str) {
                o.propagation = Propagation::parse(policy)?;
            } else if b.get("orphanDependents").and_then(Value::as_bool) == Some(true) {
                o.propagation = Propagation::Orphan;
            }
            if let Some(g) = b.get("gracePeriodSeconds").and_then(Value::as_i64) {
                o.grace_period = Some(g);
            }
            o.uid = b
                .pointer("/preconditions/uid")
                .and_then(Value::as_str)
                .map(String::from);
            if let Some(rv) = b
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
            {
                o.resource_version = Some(rv.parse().map_err(|_| {
                    ApiError::BadRequest(format!("invalid resourceVersion {rv:?}"))
                })?);
            }
            if b.get("dryRun")
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|d| d == "All"))
            {
                o.dry_run = true;
            }
        }
        Ok(o)
    }
}

/// DELETE one object. Objects with finalizers (and namespaces, whose content
/// must go first) are only marked with `deletionTimestamp`; the last
/// finalizer's removal deletes them.
pub async fn delete(
    store: &Store,
    res: &Resource,
    ns: &str,
    name: &str,
    opts: &DeleteOptions,
) -> Result<Arc<Value>, ApiError> {
    let key = res.key(ns, name);
    let ns_opt = res.namespaced.then_some(ns);
    if res.kind == "Namespace" && crate::api::validation::UNDELETABLE_NAMESPACES.contains(&name) {
        return Err(ApiError::Forbidden {
            resource: "namespaces".into(),
            name: name.into(),
            detail: "this namespace may not be deleted".into(),
        });
    }
    for _ in 0..UPDATE_RETRIES {
        let old = store
            .cache()
            .get(&key)
            .ok_or_else(|| not_found(res, name))?;
        if let Some(uid) = &opts.uid {
            if old.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid) {
                return Err(store_error(
                    res,
                    ns_opt,
                    name,
                    StoreError::Rejected(Rejection::UidMismatch {
                        current: old
                            .pointer("/metadata/uid")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .into(),
                    }),
                ));
            }
        }
        if let Some(rv) = opts.resource_version {
            if rv != revision_of(&old) {
                return Err(conflict(res, name));
            }
        }
        let precondition = Precondition {
            exists: Some(true),
            resource_version: Some(revision_of(&old)),
            uid: opts.uid.clone(),
            ..Default::default()
        };
        let grace = pod_grace_period(res, &old, opts);
        let propagation_finalizer = opts
            .propagation
            .finalizer()
            .filter(|_| res.kind != "Namespace");
        let graceful = grace.is_some()
            || propagation_finalizer.is_some()
            || !finalizers(&old).is_empty()
            || !namespace_finalized(res, &old);
        let result = if graceful {
            if is_deleting(&old) || opts.dry_run {
                return Ok(old);
            }
            let mut marked = (*old).clone();
            if let Some(f) = propagation_finalizer {
                let mut list = finalizers(&marked);
                if !list.iter().any(|x| x == f) {
                    list.push(f.to_string());
                }
                meta::meta_mut(&mut marked).insert("finalizers".into(), json!(list));
            }
            let m = meta::meta_mut(&mut marked);
            let at = chrono::Utc::now() + chrono::Duration::seconds(grace.unwrap_or(0));
            m.insert(
                "deletionTimestamp".into(),
                json!(at.format("%Y-%m-%dT%H:%M:%SZ").to_string()),
            );
            m.insert(
                "deletionGracePeriodSeconds".into(),
                json!(grace.unwrap_or(0)),
            );
            if res.kind == "Namespace" {
                marked["status"] = json!({"phase": "Terminating"});
            }
            store
                .write(Request::Put {
                    key: key.clone(),
                    object: Arc::new(marked),
                    precondition,
                })
                .await
        } else {
            if opts.dry_run {
                return Ok(old);
            }
            let req = Request::Delete {
                key: key.clone(),
                precondition,
            };
            write_with(store, req, releases(store, res, &old)).await
        };
        match result {
            Ok(v) => return Ok(v),
            Err(StoreError::Rejected(Rejection::Conflict { .. } | Rejection::InTxn { .. }))
                if opts.resource_version.is_none() =>
            {
                continue
            }
            Err(e) => return Err(store_error(res, ns_opt, name, e)),
        }
    }
    Err(conflict(res, name))
}

/// DELETE a collection: every object the selectors match. Returns them as a list.
pub async fn delete_collection(
    store: &Store,
    res: &Resource,
    ns: Option<&str>,
    p: &Params,
    opts: &DeleteOptions,
) -> Result<Value, ApiError> {
    let filter = Filter::from_params(res, p)?;
    let page = store
        .cache()
        .list(&res.prefix(ns), None, None, None, &|o| filter.matches(o))
        .map_err(|e| ApiError::Expired(e.to_string()))?;
    let mut deleted = Vec::new();
    for obj in page.items {
        match delete(store, res, meta::namespace(&obj), meta::name(&obj), opts).await {
            Ok(v) => deleted.push(v),
            Err(ApiError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(json!({
        "kind": format!("{}List", res.kind),
        "apiVersion": res.api_version(),
        "metadata": {"resourceVersion": store.cache().revision().to_string()},
        "items": deleted,
    }))
}

/// The `autoscaling/v1` Scale view of a workload.
pub fn scale_of(res: &Resource, obj: &Value) -> Value {
    let paths = crate::api::crd::of(res).and_then(|c| c.scale.clone());
    let spec_path = paths
        .as_ref()
        .map_or("/spec/replicas".to_string(), |p| p.spec_replicas.clone());
    let status_path = paths.as_ref().map_or("/status/replicas".to_string(), |p| {
        p.status_replicas.clone()
    });
    let selector = match paths.as_ref() {
        // a custom resource names where its selector string is
        Some(p) => p
            .label_selector
            .as_ref()
            .and_then(|l| obj.pointer(l))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        None => obj
            .pointer("/spec/selector")
            .and_then(|s| LabelSelector::from_object(s).ok())
            .map(|s| s.to_string())
            .unwrap_or_default(),
    };
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta::name(obj),
            "namespace": meta::namespace(obj),
            "uid": obj.pointer("/metadata/uid"),
            "resourceVersion": meta::resource_version(obj),
            "creationTimestamp": obj.pointer("/metadata/creationTimestamp"),
        },
        "spec": {"replicas": obj.pointer(&spec_path).and_then(Value::as_i64).unwrap_or(if res.kind == "Deployment" { 1 } else { 0 })},
        "status": {
            "replicas": obj.pointer(&status_path).and_then(Value::as_i64).unwrap_or(0),
            "selector": selector,
        },
    })
}

/// Set the value at JSON pointer `ptr`, making the objects on the way.
fn set_pointer(v: &mut Value, ptr: &str, x: Value) {
    let mut cur = v;
    for part in ptr.trim_start_matches('/').split('/') {
        let part = part.replace("~1", "/").replace("~0", "~");
        if !cur.is_object() {
            *cur = json!({});
        }
        cur = cur
            .as_object_mut()
            .expect("made an object")
            .entry(part)
            .or_insert(Value::Null);
    }
    *cur = x;
}

/// PUT or PATCH of `/scale`: `scale_body` computes the new Scale from the current one.
pub async fn update_scale<F>(
    store: &Store,
    res: &Resource,
    ns: &str,
    name: &str,
    dry_run: bool,
    scale_body: F,
) -> Result<Value, ApiError>
where
    F: Fn(&Value) -> Result<Value, ApiError>,
{
    let updated = update_with(store, res, ns, name, Part::System, dry_run, |old| {
        let scale = scale_body(&scale_of(res, old))?;
        let replicas = scale
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .ok_or_else(|| ApiError::Invalid {
                kind: "Scale".into(),
                name: name.into(),
                errors: vec![crate::api::FieldError::required("spec.replicas")],
            })?;
        if replicas < 0 {
            return Err(ApiError::Invalid {
                kind: "Scale".into(),
                name: name.into(),
                errors: vec![crate::api::FieldError::invalid(
                    "spec.replicas",
                    replicas,
                    "must be greater than or equal to 0",
                )],
            });
        }
        let mut new = old.clone();
        match crate::api::crd::of(res).and_then(|c| c.scale.clone()) {
            Some(paths) => set_pointer(&mut new, &paths.spec_replicas, json!(replicas)),
            None => new["spec"]["replicas"] = json!(replicas),
        }
        new["metadata"]["resourceVersion"] = json!(scale
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or_default());
        Ok(new)
    })
    .await?;
    Ok(scale_of(res, &updated))
}

/// POST `pods/{name}/binding`: assign a pod to a node, once.
pub async fn bind(store: &Store, ns: &str, name: &str, binding: Value) -> Result<Value, ApiError> {
    let res = resources::lookup("pods").expect("pods are served");
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::Invalid {
            kind: "Binding".into(),
            name: name.into(),
            errors: vec![crate::api::FieldError::required("target.name")],
        })?
        .to_string();
    update_with(store, res, ns, name, Part::System, false, |old| {
        match old.pointer("/spec/nodeName").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => Err(ApiError::Conflict {
                resource: "pods/binding".into(),
                name: name.into(),
                detail: format!("pod {name} is already assigned to node {n:?}"),
            }),
            _ => {
                let mut new = old.clone();
                new["spec"]["nodeName"] = json!(node);
                Ok(new)
            }
        }
    })
    .await?;
    Ok(
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    )
}

/// PUT `namespaces/{name}/finalize`: replace `spec.finalizers`.
pub async fn finalize_namespace(
    store: &Store,
    name: &str,
    body: Value,
) -> Result<Arc<Value>, ApiError> {
    let res = resources::lookup("namespaces").expect("namespaces are served");
    let finalizers = body
        .pointer("/spec/finalizers")
        .cloned()
        .unwrap_or(json!([]));
    update_with(store, res, "", name, Part::System, false, |old| {
        let mut new = old.clone();
        new["spec"]["finalizers"] = finalizers.clone();
        Ok(new)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_is_written_as_its_value_would_be() {
        let pod = |n: &str| {
            std::sync::Arc::new(json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": n, "namespace": "default", "resourceVersion": "7"},
                "spec": {"containers": [{"name": "c", "image": "i", "args": ["a\"b"]}]},
                "status": {"phase": "Running"}}))
        };
        let list = || List {
            kind: "PodList".into(),
            api_version: "v1".into(),
            metadata: json!({"resourceVersion": "9", "continue": "x"}),
            items: vec![pod("a"), pod("b")],
        };
        // what the handler wrote before, a value built item by item
        let expected = json!({
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": "9", "continue": "x"},
            "items": [pod("a").as_ref(), pod("b").as_ref()],
        });
        let expected = serde_json::to_string(&expected).unwrap();
        assert_eq!(serde_json::to_string(&list()).unwrap(), expected);
        assert_eq!(
            serde_json::to_string(&list().into_value()).unwrap(),
            expected
        );
    }

    #[test]
    fn continue_tokens_round_trip_and_reject_garbage() {
        let t = encode_continue(42, "core/pods/default/a");
        assert_eq!(
            decode_continue(&t).unwrap(),
            (42, "core/pods/default/a".to_string())
        );
        assert!(decode_continue("!!").is_err());
    }

    #[test]
    fn patches_apply_in_each_format() {
        let doc = json!({"metadata": {"name": "a", "labels": {"x": "1", "y": "2"}}, "spec": {"replicas": 1}});
        let merged = apply_patch(
            &doc,
            PatchType::Merge,
            &json!({"metadata": {"labels": {"y": null, "z": "3"}}}),
            None,
        )
        .unwrap();
        assert_eq!(merged["metadata"]["labels"], json!({"x": "1", "z": "3"}));
        let patched = apply_patch(
            &doc,
            PatchType::Json,
            &json!([{"op": "replace", "path": "/spec/replicas", "value": 5}]),
            None,
        )
        .unwrap();
        assert_eq!(patched["spec"]["replicas"], 5);
        assert!(apply_patch(
            &doc,
            PatchType::Json,
            &json!([{"op": "test", "path": "/spec/replicas", "value": 9}]),
            None
        )
        .is_err());
        assert!(PatchType::from_content_type("text/plain").is_err());
    }
}
