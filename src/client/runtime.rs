//! The machinery the controllers and the node agent share: a reflector (list, then watch,
//! into a cache; resume from the last resourceVersion; relist on 410 Gone;
//! back off on errors), a deduplicating work queue (a key is queued at most
//! once and never handed to two workers at the same time), and a worker loop
//! that runs a level-triggered reconcile function per key, requeueing with
//! back-off on errors. [`Informers`] share one reflector and cache per kind
//! among the controllers of a process.
//!
//! The shape follows client-go and kube-runtime: handlers map changes to
//! keys, reconcilers read the cache and act through the API.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use tokio::sync::{watch, Notify};

use super::CancelToken;
use super::Client;
use crate::api::meta;
use crate::api::resources::Resource;
use crate::json::shrink;

/// Lock `m`, taking the data of a poisoned lock as it is.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `namespace/name`, or `name` for cluster-scoped objects.
pub fn key_of(obj: &Value) -> String {
    let ns = meta::namespace(obj);
    if ns.is_empty() {
        meta::name(obj).to_string()
    } else {
        format!("{ns}/{}", meta::name(obj))
    }
}

/// A change the reflector saw.
#[derive(Debug, Clone)]
pub enum Change {
    /// Created or modified (or found by a relist).
    Applied(Arc<Value>),
    /// Deleted (or gone at a relist).
    Deleted(Arc<Value>),
}

impl Change {
    pub fn object(&self) -> &Value {
        match self {
            Change::Applied(o) | Change::Deleted(o) => o,
        }
    }
}

/// The cache a reflector keeps: every object of one kind, by key.
#[derive(Default)]
pub struct Cache {
    objects: RwLock<BTreeMap<String, Arc<Value>>>,
    synced: watch::Sender<bool>,
    /// Set when this cache is a view of a shared informer's cache
    /// ([`Informers`]): every read goes there.
    view_of: OnceLock<Arc<Cache>>,
}

impl Cache {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The cache that holds the objects: the shared one this is a view
    /// of, or this one.
    fn target(&self) -> &Cache {
        self.view_of.get().map_or(self, |c| c)
    }

    pub fn get(&self, key: &str) -> Option<Arc<Value>> {
        self.target()
            .objects
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    /// The object at `key`, unless it is being deleted.
    pub fn get_live(&self, key: &str) -> Option<Arc<Value>> {
        self.get(key).filter(|o| !meta::is_deleting(o))
    }

    /// Every object (a snapshot).
    pub fn all(&self) -> Vec<Arc<Value>> {
        self.target()
            .objects
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The objects of one namespace.
    pub fn in_namespace(&self, ns: &str) -> Vec<Arc<Value>> {
        let prefix = format!("{ns}/");
        self.target()
            .objects
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The objects of namespace `ns` whose controller has uid `uid`.
    pub fn owned_by(&self, ns: &str, uid: &str) -> Vec<Arc<Value>> {
        self.in_namespace(ns)
            .into_iter()
            .filter(|o| controller_of(o).is_some_and(|(_, _, u)| u == uid))
            .collect()
    }

    /// Resolves once the first list has filled the cache.
    pub async fn wait_synced(&self) {
        let mut rx = self.target().synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Put an object known from elsewhere (local state) into the cache, so
    /// the next list reports it deleted if the API no longer has it.
    pub fn seed(&self, obj: Value) {
        self.apply(obj);
    }

    /// Keep only the objects whose key `keep` accepts (caches filled by
    /// hand rather than by a reflector).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.target()
            .objects
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| keep(k));
    }

    fn apply(&self, obj: Value) -> Change {
        self.apply_shrunk(shrink(obj))
    }

    /// [`Self::apply`] for an object with no spare room already (a watch
    /// event's).
    fn apply_shrunk(&self, obj: Value) -> Change {
        let obj = Arc::new(obj);
        self.target()
            .objects
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key_of(&obj), obj.clone());
        Change::Applied(obj)
    }

    fn delete(&self, obj: Value) -> Change {
        let key = key_of(&obj);
        let last = self
            .target()
            .objects
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        Change::Deleted(last.unwrap_or_else(|| Arc::new(obj)))
    }

    /// Replace the contents with a fresh list; the changes that makes.
    fn replace(&self, items: Vec<Value>) -> Vec<Change> {
        let mut fresh: BTreeMap<String, Arc<Value>> = items
            .into_iter()
            .map(|o| (key_of(&o), Arc::new(shrink(o))))
            .collect();
        let mut map = self
            .target()
            .objects
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let mut changes: Vec<Change> = map
            .iter()
            .filter(|(k, _)| !fresh.contains_key(*k))
            .map(|(_, v)| Change::Deleted(v.clone()))
            .collect();
        changes.extend(fresh.values().map(|v| Change::Applied(v.clone())));
        std::mem::swap(&mut *map, &mut fresh);
        changes
    }
}

/// The kinds the controllers of one process share informers for: whole
/// kinds (no selector), read by many controllers. The `shared-informers`
/// identity may list and watch exactly these (`auth::policy`).
pub const SHARED_KINDS: &[&str] = &[
    "pods",
    "nodes",
    "namespaces",
    "services",
    "endpoints",
    "endpointslices",
    "configmaps",
    "secrets",
    "persistentvolumeclaims",
    "replicasets",
    "deployments",
    "statefulsets",
    "daemonsets",
    "controllerrevisions",
    "jobs",
    "cronjobs",
    "poddisruptionbudgets",
    "horizontalpodautoscalers",
    "leases",
    "clusterroles",
    "ingresses",
    "ingressclasses",
];

/// A handler of a shared informer's changes.
type Handler = Box<dyn Fn(Change) + Send + Sync>;

/// One shared informer: the cache of one kind and every subscriber's handler.
struct Shared {
    cache: Arc<Cache>,
    handlers: RwLock<Vec<Handler>>,
}

impl Shared {
    fn dispatch(&self, change: Change) {
        for h in self
            .handlers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            h(change.clone());
        }
    }
}

/// Informers shared by the controllers of one process, as client-go's
/// `SharedInformerFactory`: one list and watch, and one copy of every
/// object, per kind, however many controllers watch it. Give the
/// controllers' clients [`Client::with_informers`]; [`run_controller`]
/// then subscribes the [`SHARED_KINDS`] watches instead of reflecting
/// them itself, and the controller's cache becomes a view of the shared
/// one. The informers list and watch under their own client's identity and
/// stop at `cancel`.
pub struct Informers {
    client: Client,
    cancel: CancelToken,
    kinds: Mutex<HashMap<&'static str, Arc<Shared>>>,
}

impl Informers {
    pub fn new(client: Client, cancel: CancelToken) -> Arc<Self> {
        Arc::new(Self {
            client,
            cancel,
            kinds: Mutex::default(),
        })
    }

    /// Make `cache` a view of the shared cache of `res`, and call
    /// `on_change` for each of its changes, starting with the objects it
    /// already holds. Hands `on_change` back when `res` is not shared.
    fn subscribe(
        &self,
        res: &'static Resource,
        cache: &Cache,
        on_change: Handler,
    ) -> Result<(), Handler> {
        if !SHARED_KINDS.contains(&res.plural) {
            return Err(on_change);
        }
        let shared = lock(&self.kinds)
            .entry(res.plural)
            .or_insert_with(|| {
                let shared = Arc::new(Shared {
                    cache: Cache::new(),
                    handlers: RwLock::default(),
                });
                let s = shared.clone();
                tokio::spawn(reflect(
                    self.client.clone(),
                    res,
                    shared.cache.clone(),
                    move |c| s.dispatch(c),
                    self.cancel.clone(),
                ));
                shared
            })
            .clone();
        if cache.view_of.set(shared.cache.clone()).is_err() {
            // one cache in two watches: already a view
            tracing::debug!(kind = res.kind, "cache already shared");
        }
        // Under the handlers' lock the reflector cannot dispatch: what is
        // cached now is replayed, what changes later is dispatched.
        let mut handlers = shared.handlers.write().unwrap_or_else(|e| e.into_inner());
        for obj in shared.cache.all() {
            on_change(Change::Applied(obj));
        }
        handlers.push(on_change);
        Ok(())
    }
}

/// List and watch `res` (all namespaces) into `cache`, calling `on_change`
/// for every change, until `cancel` turns true.
pub async fn reflect(
    client: Client,
    res: &'static Resource,
    cache: Arc<Cache>,
    on_change: impl Fn(Change) + Send + Sync + 'static,
    cancel: CancelToken,
) {
    reflect_selected(client, res, "", cache, on_change, cancel).await
}

/// [`reflect`] for the objects `selector` (`labelSelector=...` or
/// `fieldSelector=...`, URL-encoded) selects.
pub async fn reflect_selected(
    client: Client,
    res: &'static Resource,
    selector: &str,
    cache: Arc<Cache>,
    on_change: impl Fn(Change) + Send + Sync + 'static,
    mut cancel: CancelToken,
) {
    let mut backoff = Duration::from_millis(100);
    let mut resume: Option<String> = None;
    loop {
        if *cancel.borrow() {
            return;
        }
        let rv = match resume.take() {
            Some(rv) => rv,
            None => {
                let list = tokio::select! {
                    l = client.list(res, None, selector) => l,
                    _ = cancel.changed() => return,
                };
                match list {
                    Ok(list) => {
                        let items = list["items"].as_array().cloned().unwrap_or_default();
                        for c in cache.replace(items) {
                            on_change(c);
                        }
                        cache.target().synced.send_replace(true);
                        backoff = Duration::from_millis(100);
                        list["metadata"]["resourceVersion"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string()
                    }
                    Err(e) => {
                        tracing::debug!(kind = res.kind, error = %e, "list failed; backing off");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = cancel.changed() => return,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                        continue;
                    }
                }
            }
        };
        let mut query = format!("resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=300");
        if !selector.is_empty() {
            query = format!("{selector}&{query}");
        }
        let stream = match client.watch(res, None, &query).await {
            Ok(s) => s,
            Err(_) => continue, // relist
        };
        let mut stream = std::pin::pin!(stream);
        let mut last = rv;
        loop {
            let ev = tokio::select! {
                ev = stream.next() => ev,
                _ = cancel.changed() => return,
            };
            match ev {
                Some(Ok(ev)) => {
                    let rv = meta::resource_version(&ev.object).to_string();
                    match ev.event_type.as_str() {
                        "ADDED" | "MODIFIED" => on_change(cache.apply_shrunk(ev.object)),
                        "DELETED" => on_change(cache.delete(ev.object)),
                        "BOOKMARK" => {}
                        // 410 Gone: the window moved past us; relist
                        _ => break,
                    }
                    if !rv.is_empty() {
                        last = rv;
                    }
                }
                // the watch ended (timeout, server restart): resume where we were
                Some(Err(_)) | None => {
                    resume = Some(last);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                        _ = cancel.changed() => return,
                    }
                    break;
                }
            }
        }
    }
}

#[derive(Default)]
struct QueueState {
    order: VecDeque<String>,
    queued: HashSet<String>,
    active: HashSet<String>,
    /// Added again while a worker had it: queue once that worker is done.
    again: HashSet<String>,
    failures: HashMap<String, u32>,
    /// Keys waiting for a delayed add, and when it is due: one timer per
    /// key, the earliest asked for (client-go's delaying queue).
    waiting: HashMap<String, tokio::time::Instant>,
}

/// A deduplicating work queue of keys.
#[derive(Default)]
pub struct WorkQueue {
    state: Mutex<QueueState>,
    ready: Notify,
}

impl WorkQueue {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Queue `key` unless it is queued already (or, if a worker has it,
    /// once that worker is done).
    pub fn add(&self, key: &str) {
        let mut s = lock(&self.state);
        if s.active.contains(key) {
            s.again.insert(key.to_string());
        } else if s.queued.insert(key.to_string()) {
            s.order.push_back(key.to_string());
            drop(s);
            self.ready.notify_one();
        }
    }

    /// Queue `key` after `delay`, unless it is already waiting to be
    /// queued sooner: a key has one timer at most, due at the earliest time
    /// asked for, so a key requeued by both its own resync and a failure
    /// does not run two timer chains from then on.
    pub fn add_after(self: &Arc<Self>, key: &str, delay: Duration) {
        let due = tokio::time::Instant::now() + delay;
        {
            let mut s = lock(&self.state);
            match s.waiting.get_mut(key) {
                Some(at) if *at <= due => return,
                Some(at) => *at = due,
                None => {
                    s.waiting.insert(key.to_string(), due);
                }
            }
        }
        let (q, key) = (self.clone(), key.to_string());
        tokio::spawn(async move {
            tokio::time::sleep_until(due).await;
            let mine = {
                let mut s = lock(&q.state);
                let mine = s.waiting.get(&key) == Some(&due);
                if mine {
                    s.waiting.remove(&key);
                }
                mine
            };
            // a later timer for an earlier time replaced this one and has run
            if mine {
                q.add(&key);
            }
        });
    }

    /// Keys waiting for a delayed add.
    pub fn delayed(&self) -> usize {
        lock(&self.state).waiting.len()
    }

    /// Queue `key` after its back-off: 5 ms doubling per consecutive
    /// failure, up to 60 s.
    pub fn add_rate_limited(self: &Arc<Self>, key: &str) {
        let n = {
            let mut s = lock(&self.state);
            let n = s.failures.entry(key.to_string()).or_default();
            *n += 1;
            *n
        };
        let delay = Duration::from_millis(5)
            .saturating_mul(1u32 << n.min(14))
            .min(Duration::from_secs(60));
        self.add_after(key, delay);
    }

    /// Reset `key`'s back-off.
    pub fn forget(&self, key: &str) {
        lock(&self.state).failures.remove(key);
    }

    /// The next key; the caller owns it until [`WorkQueue::done`].
    pub async fn next(&self) -> String {
        loop {
            let notified = self.ready.notified();
            {
                let mut s = lock(&self.state);
                if let Some(key) = s.order.pop_front() {
                    s.queued.remove(&key);
                    s.active.insert(key.clone());
                    if !s.order.is_empty() {
                        drop(s);
                        self.ready.notify_one();
                    }
                    return key;
                }
            }
            notified.await;
        }
    }

    /// The worker is done with `key`.
    pub fn done(&self, key: &str) {
        let again = {
            let mut s = lock(&self.state);
            s.active.remove(key);
            s.again.remove(key)
        };
        if again {
            self.add(key);
        }
    }

    /// Keys waiting (not counting those being worked on).
    pub fn len(&self) -> usize {
        lock(&self.state).order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a reconcile asks for next.
pub enum Next {
    /// Nothing until something changes.
    Done,
    /// Look again after this long (level-triggered resync).
    After(Duration),
}

/// Run `workers` workers over `queue` until `cancel`: each takes a key,
/// reconciles it, and requeues it with back-off if that failed.
pub async fn run_workers<F, Fut, E>(
    name: &'static str,
    queue: Arc<WorkQueue>,
    workers: usize,
    reconcile: F,
    cancel: CancelToken,
) where
    F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Next, E>> + Send,
    E: std::fmt::Display + Send,
{
    let mut handles = Vec::new();
    for _ in 0..workers.max(1) {
        let (queue, reconcile, mut cancel) = (queue.clone(), reconcile.clone(), cancel.clone());
        handles.push(tokio::spawn(async move {
            loop {
                let key = tokio::select! {
                    k = queue.next() => k,
                    _ = cancel.wait_for(|c| *c) => return,
                };
                match reconcile(key.clone()).await {
                    Ok(next) => {
                        queue.forget(&key);
                        if let Next::After(d) = next {
                            queue.add_after(&key, d);
                        }
                    }
                    Err(e) => {
                        tracing::debug!(controller = name, key, error = %e, "reconcile failed; retrying");
                        queue.add_rate_limited(&key);
                    }
                }
                queue.done(&key);
            }
        }));
    }
    for h in handles {
        let _ = h.await;
    }
}

/// The controller reference an object carries, if any: (kind, name, uid).
pub fn controller_of(obj: &Value) -> Option<(&str, &str, &str)> {
    let r = obj["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|o| o["controller"] == true)?;
    Some((r["kind"].as_str()?, r["name"].as_str()?, r["uid"].as_str()?))
}

/// A controller ownerReference to `owner`.
pub fn owner_ref(owner: &Value, api_version: &str, kind: &str) -> Value {
    serde_json::json!({"apiVersion": api_version, "kind": kind, "name": meta::name(owner),
        "uid": owner["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true})
}

/// A handler that queues the key of every changed object.
pub fn enqueue_self(queue: &Arc<WorkQueue>) -> impl Fn(Change) + Send + Sync + 'static {
    let queue = queue.clone();
    move |c: Change| queue.add(&key_of(c.object()))
}

/// A handler that queues the `kind` controller of every changed object.
pub fn enqueue_controller(
    queue: &Arc<WorkQueue>,
    kind: &'static str,
) -> impl Fn(Change) + Send + Sync + 'static {
    let queue = queue.clone();
    move |c: Change| {
        if let Some((k, name, _)) = controller_of(c.object()) {
            if k == kind {
                queue.add(&format!("{}/{name}", meta::namespace(c.object())));
            }
        }
    }
}

/// Merge-patch `obj`'s status with `status` unless it already holds those
/// values. `Ok(false)`: the object is gone.
pub async fn update_status(
    client: &Client,
    res: &Resource,
    obj: &Value,
    status: &Value,
) -> Result<bool, crate::client::ClientError> {
    let differs = status
        .as_object()
        .into_iter()
        .flatten()
        .any(|(k, v)| obj["status"][k] != *v);
    if !differs {
        return Ok(true);
    }
    let ns = res.namespaced.then(|| meta::namespace(obj));
    let path = format!("{}/status", res.object_path(ns, meta::name(obj)));
    match client
        .request_as(
            reqwest::Method::PATCH,
            &path,
            Some(&serde_json::json!({ "status": status })),
            "application/merge-patch+json",
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

/// One kind a controller watches: the cache it fills and what its changes queue.
pub struct Watch {
    res: &'static Resource,
    /// `labelSelector=...` or `fieldSelector=...` (URL-encoded), or empty.
    selector: String,
    cache: Arc<Cache>,
    on_change: Box<dyn Fn(Change) + Send + Sync>,
}

impl Watch {
    /// Watch `plural` (a served kind) into `cache`.
    pub fn new(
        plural: &str,
        cache: &Arc<Cache>,
        on_change: impl Fn(Change) + Send + Sync + 'static,
    ) -> Self {
        Self::selected(plural, "", cache, on_change)
    }

    /// Watch only the objects `selector` selects (the server filters, so
    /// other objects of the kind cost nothing).
    pub fn selected(
        plural: &str,
        selector: &str,
        cache: &Arc<Cache>,
        on_change: impl Fn(Change) + Send + Sync + 'static,
    ) -> Self {
        Self {
            res: crate::api::resources::lookup(plural).expect("controllers watch served kinds"),
            selector: selector.to_string(),
            cache: cache.clone(),
            on_change: Box::new(on_change),
        }
    }
}

/// A controller's reconcile of one key: read the caches, decide, act
/// through the API; run by [`run_controller`].
pub trait Reconcile: Send + Sync + 'static {
    fn reconcile(
        &self,
        key: String,
    ) -> impl Future<Output = Result<Next, crate::client::ClientError>> + Send;
}

/// Run a controller until `cancel`: reflect every watched kind into its
/// cache, wait for each cache's first list, then run `workers` reconcilers
/// over `queue`.
pub async fn run_controller<R: Reconcile>(
    name: &'static str,
    client: &Client,
    watches: Vec<Watch>,
    queue: Arc<WorkQueue>,
    workers: usize,
    controller: Arc<R>,
    cancel: CancelToken,
) {
    let caches: Vec<Arc<Cache>> = watches.iter().map(|w| w.cache.clone()).collect();
    let mut reflectors = Vec::new();
    for w in watches {
        let on_change = match client.informers() {
            Some(informers) if w.selector.is_empty() => {
                match informers.subscribe(w.res, &w.cache, w.on_change) {
                    Ok(()) => continue,
                    Err(on_change) => on_change,
                }
            }
            _ => w.on_change,
        };
        let (client, cancel) = (client.clone(), cancel.clone());
        reflectors.push(tokio::spawn(async move {
            reflect_selected(client, w.res, &w.selector, w.cache, on_change, cancel).await
        }));
    }
    for c in &caches {
        c.wait_synced().await;
    }
    let reconcile = move |key: String| {
        let c = controller.clone();
        async move { c.reconcile(key).await }
    };
    run_workers(name, queue, workers, reconcile, cancel).await;
    for r in reflectors {
        let _ = r.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> Value {
        serde_json::json!({"metadata": {"namespace": "ns", "name": name}})
    }

    #[tokio::test]
    async fn controllers_sharing_an_informer_share_its_objects() {
        // a client whose server is never reached: the test fills the
        // shared cache itself, as the informer's reflector would
        let tls = crate::tls::insecure_client_config(None).unwrap();
        let client =
            Client::with_tls("https://127.0.0.1:1", tls, super::super::Credentials::None).unwrap();
        let (_stop, cancel) = watch::channel(false);
        let informers = Informers::new(client, cancel);
        let pods = crate::api::resources::lookup("pods").unwrap();
        let seen = |log: &Arc<Mutex<Vec<String>>>| -> Handler {
            let log = log.clone();
            Box::new(move |c: Change| {
                let verb = if matches!(c, Change::Applied(_)) {
                    "+"
                } else {
                    "-"
                };
                lock(&log).push(format!("{verb}{}", key_of(c.object())));
            })
        };
        let (a_log, b_log) = (Arc::default(), Arc::default());
        let a = Cache::new();
        assert!(informers.subscribe(pods, &a, seen(&a_log)).is_ok());
        let shared = lock(&informers.kinds)["pods"].clone();
        // a change reaches every subscriber, through the one cache
        shared.dispatch(shared.cache.apply(pod("p1")));
        // a later subscriber is told what is already there
        let b = Cache::new();
        assert!(informers.subscribe(pods, &b, seen(&b_log)).is_ok());
        assert_eq!(*lock(&a_log), ["+ns/p1"]);
        assert_eq!(*lock(&b_log), ["+ns/p1"]);
        // both caches are views of one copy of each object
        assert!(Arc::ptr_eq(
            &a.get("ns/p1").unwrap(),
            &b.get("ns/p1").unwrap()
        ));
        shared.dispatch(shared.cache.delete(pod("p1")));
        assert!(a.get("ns/p1").is_none() && b.all().is_empty());
        assert_eq!(*lock(&b_log), ["+ns/p1", "-ns/p1"]);
        // kinds outside SHARED_KINDS stay the controller's own
        let crds = crate::api::resources::lookup("customresourcedefinitions").unwrap();
        assert!(informers
            .subscribe(crds, &Cache::new(), seen(&a_log))
            .is_err());
    }

    #[test]
    fn every_shared_kind_is_served() {
        for plural in SHARED_KINDS {
            assert!(crate::api::resources::lookup(plural).is_some(), "{plural}");
        }
    }

    #[tokio::test]
    async fn keys_are_deduplicated_while_queued() {
        let q = WorkQueue::new();
        q.add("a");
        q.add("b");
        q.add("a");
        assert_eq!(q.len(), 2);
        assert_eq!(q.next().await, "a");
        assert_eq!(q.next().await, "b");
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn a_key_being_worked_on_is_not_handed_out_again_until_done() {
        let q = WorkQueue::new();
        q.add("a");
        let k = q.next().await;
        q.add("a"); // changed while a worker has it
        assert!(q.is_empty(), "not handed to a second worker");
        q.done(&k);
        assert_eq!(q.len(), 1, "queued again once the first worker finished");
        assert_eq!(q.next().await, "a");
        q.done("a");
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_exponentially_and_forget_resets() {
        let q = WorkQueue::new();
        q.add_rate_limited("k"); // 10 ms
        tokio::time::sleep(Duration::from_millis(9)).await;
        assert!(q.is_empty());
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(q.next().await, "k");
        q.done("k");
        q.add_rate_limited("k"); // 20 ms
        tokio::time::sleep(Duration::from_millis(15)).await;
        assert!(q.is_empty());
        tokio::time::sleep(Duration::from_millis(6)).await;
        assert_eq!(q.len(), 1);
        q.forget("k");
        assert_eq!(lock(&q.state).failures.get("k"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_delayed_key_has_one_timer_due_at_the_earliest_time_asked() {
        let q = WorkQueue::new();
        q.add_after("k", Duration::from_secs(5));
        q.add_after("k", Duration::from_secs(9)); // later: the 5 s timer stands
        q.add_after("k", Duration::from_secs(2)); // sooner: replaces it
        assert_eq!(q.delayed(), 1);
        tokio::time::sleep(Duration::from_millis(1_999)).await;
        assert!(q.is_empty());
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(q.next().await, "k");
        q.done("k");
        assert_eq!(q.delayed(), 0);
        // the replaced 5 s timer and the ignored 9 s one add nothing
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(q.is_empty());
        // each due time is kept apart per key
        q.add_after("a", Duration::from_secs(1));
        q.add_after("b", Duration::from_secs(1));
        assert_eq!(q.delayed(), 2);
        tokio::time::sleep(Duration::from_millis(1_001)).await;
        assert_eq!(q.len(), 2);
    }

    #[tokio::test]
    async fn workers_never_reconcile_one_key_concurrently() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let q = WorkQueue::new();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let running = Arc::new(AtomicUsize::new(0));
        let overlaps = Arc::new(AtomicUsize::new(0));
        let runs = Arc::new(AtomicUsize::new(0));
        let (r, o, n) = (running.clone(), overlaps.clone(), runs.clone());
        let workers = tokio::spawn(run_workers(
            "test",
            q.clone(),
            4,
            move |_key: String| {
                let (r, o, n) = (r.clone(), o.clone(), n.clone());
                async move {
                    if r.fetch_add(1, Ordering::SeqCst) > 0 {
                        o.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    r.fetch_sub(1, Ordering::SeqCst);
                    n.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, String>(Next::Done)
                }
            },
            stop_rx,
        ));
        for _ in 0..50 {
            q.add("same");
            tokio::time::sleep(Duration::from_micros(300)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        stop_tx.send_replace(true);
        workers.await.unwrap();
        assert_eq!(overlaps.load(Ordering::SeqCst), 0);
        let n = runs.load(Ordering::SeqCst);
        assert!(
            (2..50).contains(&n),
            "coalesced, yet seen again after changes: {n}"
        );
    }

    #[test]
    fn a_relist_reports_what_disappeared() {
        let cache = Cache::default();
        let obj = |name: &str| serde_json::json!({"metadata": {"name": name, "namespace": "ns"}});
        cache.apply(obj("a"));
        cache.apply(obj("b"));
        let changes = cache.replace(vec![obj("b"), obj("c")]);
        let deleted: Vec<String> = changes
            .iter()
            .filter(|c| matches!(c, Change::Deleted(_)))
            .map(|c| key_of(c.object()))
            .collect();
        assert_eq!(deleted, vec!["ns/a"]);
        assert_eq!(changes.len(), 3);
        assert_eq!(cache.in_namespace("ns").len(), 2);
        assert!(cache.get("ns/c").is_some());
    }
}
