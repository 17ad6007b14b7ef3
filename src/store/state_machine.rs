//! The Raft state machine: objects as JSON documents in redb, mirrored in the
//! watch [`Cache`]. Preconditions (create-if-absent, resourceVersion match,
//! namespace present) are decided here, in log order, against the cache.
//!
//! The Raft log is the durable record; the redb file only saves replaying
//! the whole log at start. So applies are not written to it one by one:
//! they collect in memory ([`Pending`], latest value per key) and are
//! written together, without fsync, every [`FLUSH_AFTER`] or
//! [`FLUSH_KEYS`] keys, before a snapshot is built, and when the state
//! machine is dropped. An object written many times in that window (a
//! pod's status, a Lease) reaches the disk once. Snapshot builds and
//! installs are committed with fsync, and logs are purged only behind a
//! snapshot, so the log always reaches back to what the file has on disk:
//! after a crash openraft re-applies everything past its `last_applied`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Cursor;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder, SnapshotMeta,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::cache::{Cache, Change, ChangeKind};
use super::encryption::Keyring;
use super::types::{
    revision, revision_after, revision_of, stamp_revision, LogId, NodeId, Precondition, Rejection,
    Request, Response, StorageError, StoredMembership, TypeConfig, REMEMBERED_REQUESTS,
    REVISIONS_PER_ENTRY,
};
use crate::json::{shrink, shrink_top};

pub(crate) const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");
/// Request id → [`Remembered`]: the answers to the last writes that came
/// with an id ([`Request::Once`]).
const REQUESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("requests");

/// The answer to a write with a request id, as stored: an applied object in
/// its stored form (sealed when it is a Secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Remembered {
    /// Order of arrival; the oldest are forgotten first.
    pub seq: u64,
    pub key: String,
    pub response: Response,
}

/// [`Remembered`] as it is written, borrowing the response rather than
/// copying it: serialised the same way.
#[derive(Serialize)]
struct RememberedRef<'a> {
    seq: u64,
    key: &'a str,
    response: StoredResponse<'a>,
}

/// A [`Response`] in its stored form, borrowed; serialised as `Response` is.
#[derive(Serialize)]
enum StoredResponse<'a> {
    None,
    Applied(std::borrow::Cow<'a, Value>),
    Rejected(&'a Rejection),
    Batch(Vec<StoredResponse<'a>>),
}

/// Applied writes are written to the redb file at most this long after
/// the first of them.
pub const FLUSH_AFTER: Duration = Duration::from_secs(30);
/// ... or once this many keys wait.
pub const FLUSH_KEYS: usize = 4096;

/// redb's page cache for `state.redb`. Reads are served by the watch
/// cache, never by redb (only start-up and snapshots read it), so its
/// default of 1 GiB would only keep pages already written in memory: the
/// server's RSS grew by every page each flush touched.
const REDB_CACHE_BYTES: usize = 8 << 20;

/// Applied objects not yet in the redb file: the latest value of each key
/// (`None`: deleted). Shared with [`super::Store::stored`], which reads the
/// file through it.
pub type PendingObjects = Arc<Mutex<HashMap<String, Option<Arc<Value>>>>>;

/// What the next flush writes besides the objects.
#[derive(Default)]
struct Pending {
    /// Remembered answers by request id (`None`: forgotten), stored form.
    requests: HashMap<String, Option<Vec<u8>>>,
    /// When the oldest unwritten apply happened.
    since: Option<Instant>,
}

type Entry = openraft::Entry<TypeConfig>;
type Meta = SnapshotMeta<NodeId, openraft::BasicNode>;

/// The content of a snapshot: what `wk snapshot save` writes, and what Raft
/// ships to a follower that is too far behind.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotData {
    /// Format marker, so a wrong file is refused with a clear error.
    pub format: String,
    /// The revision the snapshot was taken at.
    pub revision: u64,
    /// Every stored object, by key.
    pub objects: Vec<(String, Value)>,
    /// The answers remembered for request ids (Raft snapshots only; a
    /// saved snapshot starts a new cluster, which has seen no request).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requests: Vec<(String, Remembered)>,
}

/// The format marker of [`SnapshotData`].
pub const SNAPSHOT_FORMAT: &str = "wasmkube-snapshot/v1";

/// The JSON of a [`SnapshotData`], with each object copied as stored (it is
/// JSON already) rather than parsed and encoded again: a snapshot of
/// 50,000 pods is 100 MB, and parsing it cost as much as the writes that
/// filled it.
fn snapshot_json(
    revision: u64,
    objects: impl Iterator<Item = Result<(String, Vec<u8>), StorageError>>,
    requests: &[(String, Remembered)],
) -> Result<Vec<u8>, StorageError> {
    let mut out = Vec::new();
    out.extend_from_slice(b"{\"format\":");
    serde_json::to_writer(&mut out, SNAPSHOT_FORMAT).map_err(w)?;
    out.extend_from_slice(format!(",\"revision\":{revision},\"objects\":[").as_bytes());
    for (i, item) in objects.enumerate() {
        let (key, stored) = item?;
        if i > 0 {
            out.push(b',');
        }
        out.push(b'[');
        serde_json::to_writer(&mut out, &key).map_err(w)?;
        out.push(b',');
        out.extend_from_slice(&stored);
        out.push(b']');
    }
    out.push(b']');
    if !requests.is_empty() {
        out.extend_from_slice(b",\"requests\":");
        serde_json::to_writer(&mut out, requests).map_err(w)?;
    }
    out.push(b'}');
    Ok(out)
}

fn sm_err(verb: ErrorVerb, e: impl ToString) -> StorageError {
    StorageError::from_io_error(
        ErrorSubject::StateMachine,
        verb,
        std::io::Error::other(e.to_string()),
    )
}

fn r(e: impl ToString) -> StorageError {
    sm_err(ErrorVerb::Read, e)
}

fn w(e: impl ToString) -> StorageError {
    sm_err(ErrorVerb::Write, e)
}

/// The state machine over redb.
pub struct StateMachine {
    db: Arc<Database>,
    cache: Arc<Cache>,
    /// Opens sealed objects for the cache, seals them for redb.
    keyring: Arc<Keyring>,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    snapshot_seq: u64,
    /// The answers to recent writes with request ids, opened.
    remembered: HashMap<String, Response>,
    /// Their ids, oldest first, with their `seq`.
    remembered_order: VecDeque<(u64, String)>,
    /// Applied objects not yet written to `db`.
    pending_objects: PendingObjects,
    pending: Pending,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn get_json<T: for<'de> Deserialize<'de>>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<T>, StorageError> {
    match table.get(key).map_err(r)? {
        Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(r)?)),
        None => Ok(None),
    }
}

impl StateMachine {
    /// Open (or create) the state machine at `path` and load every object into `cache`.
    pub fn open(
        path: &Path,
        cache: Arc<Cache>,
        keyring: Arc<Keyring>,
    ) -> Result<Self, StorageError> {
        let db = redb::Builder::new()
            .set_cache_size(REDB_CACHE_BYTES)
            .create(path)
            .map_err(r)?;
        let tx = db.begin_write().map_err(w)?;
        tx.open_table(OBJECTS).map_err(w)?;
        tx.open_table(META).map_err(w)?;
        tx.open_table(SNAPSHOT).map_err(w)?;
        tx.open_table(REQUESTS).map_err(w)?;
        tx.commit().map_err(w)?;

        let tx = db.begin_read().map_err(r)?;
        let meta = tx.open_table(META).map_err(r)?;
        let last_applied: Option<LogId> = get_json(&meta, "last_applied")?;
        let membership: StoredMembership = get_json(&meta, "membership")?.unwrap_or_default();
        let objects_table = tx.open_table(OBJECTS).map_err(r)?;
        let mut objects = BTreeMap::new();
        for item in objects_table.iter().map_err(r)? {
            let (k, v) = item.map_err(r)?;
            let stored: Value = serde_json::from_slice(v.value()).map_err(r)?;
            let value = keyring.from_stored(k.value(), stored).map_err(r)?;
            objects.insert(k.value().to_string(), Arc::new(shrink(value)));
        }
        let mut stored = Vec::new();
        for item in tx.open_table(REQUESTS).map_err(r)?.iter().map_err(r)? {
            let (k, v) = item.map_err(r)?;
            let rem: Remembered = serde_json::from_slice(v.value()).map_err(r)?;
            stored.push((k.value().to_string(), rem));
        }
        drop(tx);
        cache.reset(objects, revision_after(last_applied));
        let mut sm = Self {
            db: Arc::new(db),
            cache,
            keyring,
            last_applied,
            membership,
            snapshot_seq: 0,
            remembered: HashMap::new(),
            remembered_order: VecDeque::new(),
            pending_objects: PendingObjects::default(),
            pending: Pending::default(),
        };
        sm.load_remembered(stored)?;
        Ok(sm)
    }

    /// Replace the remembered answers with `stored` (as the table holds them).
    fn load_remembered(
        &mut self,
        mut stored: Vec<(String, Remembered)>,
    ) -> Result<(), StorageError> {
        stored.sort_by_key(|(_, rem)| rem.seq);
        self.remembered.clear();
        self.remembered_order.clear();
        for (id, rem) in stored {
            let response = self.opened(&rem.key, rem.response).map_err(r)?;
            self.remembered_order.push_back((rem.seq, id.clone()));
            self.remembered.insert(id, response);
        }
        Ok(())
    }

    /// A response with its object opened (the stored form may be sealed).
    fn opened(&self, key: &str, response: Response) -> Result<Response, String> {
        Ok(match response {
            Response::Applied(v) => Response::Applied(Arc::new(
                self.keyring
                    .from_stored(key, Arc::unwrap_or_clone(v))
                    .map_err(|e| e.to_string())?,
            )),
            other => other,
        })
    }

    /// A response in its stored form (Secrets sealed), borrowing it.
    fn stored<'a>(&self, key: &str, response: &'a Response) -> StoredResponse<'a> {
        match response {
            Response::None => StoredResponse::None,
            Response::Applied(v) => StoredResponse::Applied(self.keyring.to_stored(key, v)),
            Response::Rejected(r) => StoredResponse::Rejected(r),
            Response::Batch(all) => {
                StoredResponse::Batch(all.iter().map(|r| self.stored(key, r)).collect())
            }
        }
    }

    /// The watch cache this state machine publishes to.
    pub fn cache(&self) -> Arc<Cache> {
        self.cache.clone()
    }

    /// The redb file, for reads of the stored (sealed) form.
    pub fn database(&self) -> Arc<Database> {
        self.db.clone()
    }

    /// Open the sealed objects of `req` (the leader sealed them before
    /// they entered the log).
    fn open_sealed(&self, req: Request) -> Result<Request, StorageError> {
        Ok(match req {
            Request::Put {
                key,
                object,
                precondition,
            } if super::encryption::is_sealed(&object) => Request::Put {
                object: Arc::new(self.keyring.open(&key, &object).map_err(r)?),
                key,
                precondition,
            },
            Request::Batch(reqs) => Request::Batch(
                reqs.into_iter()
                    .map(|q| self.open_sealed(q))
                    .collect::<Result<_, _>>()?,
            ),
            Request::Txn(reqs) => Request::Txn(
                reqs.into_iter()
                    .map(|q| self.open_sealed(q))
                    .collect::<Result<_, _>>()?,
            ),
            Request::Once { id, request } => Request::Once {
                id,
                request: Box::new(self.open_sealed(*request)?),
            },
            other => other,
        })
    }

    /// Apply one write of log entry `index` at position `pos`: a put or a
    /// delete, a transaction (only as a whole entry, `whole`), or a write
    /// with a request id, answered from memory when the id was seen.
    #[allow(clippy::too_many_arguments)]
    fn apply_write(
        &self,
        req: Request,
        index: u64,
        pos: u64,
        whole: bool,
        batch: &mut HashMap<String, Option<Arc<Value>>>,
        changes: &mut Vec<Change>,
        fresh: &mut Vec<(String, String, Response)>,
    ) -> Response {
        match req {
            Request::Txn(reqs) if whole => self.apply_txn(reqs, index, batch, changes),
            Request::Once { id, request } => {
                let seen = self.remembered.get(&id).or_else(|| {
                    fresh
                        .iter()
                        .find(|(i, _, _)| *i == id)
                        .map(|(_, _, resp)| resp)
                });
                if let Some(resp) = seen {
                    return resp.clone();
                }
                let key = match request.as_ref() {
                    Request::Put { key, .. } | Request::Delete { key, .. } => key.clone(),
                    // ids are given to single writes only
                    _ => return Response::Rejected(Rejection::NestedBatch),
                };
                let resp = self.apply_one(*request, revision(index, pos), batch, changes);
                fresh.push((id, key, resp.clone()));
                resp
            }
            req => self.apply_one(req, revision(index, pos), batch, changes),
        }
    }

    /// Remember the answers of this apply's writes with request ids (in
    /// memory, and for the next flush), forgetting the oldest beyond
    /// [`REMEMBERED_REQUESTS`].
    fn remember(&mut self, fresh: Vec<(String, String, Response)>) -> Result<(), StorageError> {
        if fresh.is_empty() {
            return Ok(());
        }
        let next = self.remembered_order.back().map_or(0, |(s, _)| s + 1);
        for (seq, (id, key, response)) in (next..).zip(fresh) {
            let rem = RememberedRef {
                seq,
                key: &key,
                response: self.stored(&key, &response),
            };
            self.pending
                .requests
                .insert(id.clone(), Some(serde_json::to_vec(&rem).map_err(w)?));
            self.remembered_order.push_back((seq, id.clone()));
            self.remembered.insert(id, response);
        }
        while self.remembered_order.len() > REMEMBERED_REQUESTS {
            if let Some((_, old)) = self.remembered_order.pop_front() {
                self.pending.requests.insert(old.clone(), None);
                self.remembered.remove(&old);
            }
        }
        Ok(())
    }

    /// The objects applied but not yet written to the file (shared).
    pub fn pending_objects(&self) -> PendingObjects {
        self.pending_objects.clone()
    }

    /// Write every pending apply to the redb file in one transaction.
    /// With `durable`, commit with fsync even when nothing is pending.
    fn flush(&mut self, durable: bool) -> Result<(), StorageError> {
        if self.pending.since.is_none() && !durable {
            return Ok(());
        }
        let durability = if durable {
            Durability::Immediate
        } else {
            Durability::None
        };
        let mut pending = lock(&self.pending_objects);
        let mut tx = self.db.begin_write().map_err(w)?;
        tx.set_durability(durability).map_err(w)?;
        {
            let mut objects = tx.open_table(OBJECTS).map_err(w)?;
            for (key, value) in pending.iter() {
                match value {
                    Some(v) => {
                        let stored = self.keyring.to_stored(key, v.as_ref());
                        let bytes = serde_json::to_vec(&stored).map_err(w)?;
                        objects.insert(key.as_str(), bytes.as_slice()).map_err(w)?;
                    }
                    None => {
                        objects.remove(key.as_str()).map_err(w)?;
                    }
                }
            }
            let mut meta = tx.open_table(META).map_err(w)?;
            meta.insert(
                "last_applied",
                serde_json::to_vec(&self.last_applied)
                    .map_err(w)?
                    .as_slice(),
            )
            .map_err(w)?;
            meta.insert(
                "membership",
                serde_json::to_vec(&self.membership).map_err(w)?.as_slice(),
            )
            .map_err(w)?;
            let mut requests = tx.open_table(REQUESTS).map_err(w)?;
            for (id, rem) in &self.pending.requests {
                match rem {
                    Some(bytes) => {
                        requests.insert(id.as_str(), bytes.as_slice()).map_err(w)?;
                    }
                    None => {
                        requests.remove(id.as_str()).map_err(w)?;
                    }
                }
            }
        }
        tx.commit().map_err(w)?;
        pending.clear();
        self.pending = Pending::default();
        Ok(())
    }

    /// Check `pre` against the current object (as seen by this batch).
    fn check(
        pre: &Precondition,
        current: Option<&Arc<Value>>,
        lookup: &dyn Fn(&str) -> Option<Arc<Value>>,
    ) -> Result<(), Rejection> {
        match (pre.exists, current) {
            (Some(false), Some(_)) => return Err(Rejection::AlreadyExists),
            (Some(true), None) => return Err(Rejection::NotFound),
            _ => {}
        }
        if let Some(want) = pre.resource_version {
            match current {
                Some(cur) if revision_of(cur) == want => {}
                Some(cur) => {
                    return Err(Rejection::Conflict {
                        current: revision_of(cur),
                    })
                }
                None => return Err(Rejection::NotFound),
            }
        }
        if let Some(want) = &pre.uid {
            let have = current
                .and_then(|c| c.pointer("/metadata/uid"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            if have != want {
                return Err(Rejection::UidMismatch {
                    current: have.to_string(),
                });
            }
        }
        if let Some(ns) = &pre.namespace {
            match lookup(&format!("core/namespaces//{ns}")) {
                None => return Err(Rejection::NamespaceNotFound),
                Some(n) if n.pointer("/metadata/deletionTimestamp").is_some() => {
                    return Err(Rejection::NamespaceTerminating)
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Apply one write at revision `rev`, reading and recording through `batch`.
    fn apply_one(
        &self,
        req: Request,
        rev: u64,
        batch: &mut HashMap<String, Option<Arc<Value>>>,
        changes: &mut Vec<Change>,
    ) -> Response {
        let cache = &self.cache;
        let (key, precondition) = match &req {
            Request::Put {
                key, precondition, ..
            }
            | Request::Delete { key, precondition } => (key.clone(), precondition.clone()),
            Request::Batch(_) | Request::Txn(_) | Request::Once { .. } => {
                return Response::Rejected(Rejection::NestedBatch)
            }
        };
        let lookup = |k: &str| match batch.get(k) {
            Some(v) => v.clone(),
            None => cache.get(k),
        };
        let current = lookup(&key);
        if let Err(rej) = Self::check(&precondition, current.as_ref(), &lookup) {
            return Response::Rejected(rej);
        }
        let (kind, object) = match (req, current.clone()) {
            (Request::Put { object, .. }, cur) => {
                // the only holder once read back from the log: no copy
                let mut object = Arc::unwrap_or_clone(object);
                stamp_revision(&mut object, rev);
                let kind = if cur.is_some() {
                    ChangeKind::Modified
                } else {
                    ChangeKind::Added
                };
                // the cache keeps it until it changes. The entry was parsed
                // with no spare room (`json::shrunk_arc`); the revision may
                // have added a field to the metadata, so refit that map
                if let Some(meta) = object.get_mut("metadata") {
                    *meta = shrink_top(meta.take());
                }
                (kind, Arc::new(object))
            }
            (Request::Delete { .. }, Some(cur)) => {
                let mut gone = (*cur).clone();
                stamp_revision(&mut gone, rev);
                (ChangeKind::Deleted, Arc::new(gone))
            }
            (Request::Delete { .. }, None) => return Response::Rejected(Rejection::NotFound),
            (Request::Batch(_) | Request::Txn(_) | Request::Once { .. }, _) => {
                return Response::Rejected(Rejection::NestedBatch)
            }
        };
        batch.insert(
            key.clone(),
            (kind != ChangeKind::Deleted).then(|| object.clone()),
        );
        changes.push(Change {
            revision: rev,
            key,
            kind,
            object: object.clone(),
            prev: current,
        });
        // shared with the cache: the caller copies it if it must (off this
        // task, which applies every write in turn)
        Response::Applied(object)
    }

    /// Apply a transaction (log entry `index`): all of its writes or none.
    fn apply_txn(
        &self,
        reqs: Vec<Request>,
        index: u64,
        batch: &mut HashMap<String, Option<Arc<Value>>>,
        changes: &mut Vec<Change>,
    ) -> Response {
        let mut staged = batch.clone();
        let mut staged_changes = Vec::new();
        let mut out = Vec::with_capacity(reqs.len());
        for (pos, req) in reqs.into_iter().enumerate() {
            match self.apply_one(
                req,
                revision(index, pos as u64),
                &mut staged,
                &mut staged_changes,
            ) {
                Response::Rejected(rejection) => {
                    return Response::Rejected(Rejection::InTxn {
                        index: pos,
                        rejection: Box::new(rejection),
                    })
                }
                r => out.push(r),
            }
        }
        *batch = staged;
        changes.extend(staged_changes);
        Response::Batch(out)
    }

    /// Write a whole snapshot into the tables (used by install and restore).
    fn write_snapshot(&mut self, meta: &Meta, data: &[u8]) -> Result<(), StorageError> {
        let snap: SnapshotData = serde_json::from_slice(data).map_err(r)?;
        if snap.format != SNAPSHOT_FORMAT {
            return Err(r(format!(
                "snapshot format is {:?}, expected {SNAPSHOT_FORMAT:?}",
                snap.format
            )));
        }
        let mut tx = self.db.begin_write().map_err(w)?;
        tx.set_durability(Durability::Immediate).map_err(w)?;
        {
            let mut objects = tx.open_table(OBJECTS).map_err(w)?;
            objects.retain(|_, _| false).map_err(w)?;
            for (k, v) in &snap.objects {
                let bytes = serde_json::to_vec(&self.keyring.to_stored(k, v)).map_err(w)?;
                objects.insert(k.as_str(), bytes.as_slice()).map_err(w)?;
            }
            let mut m = tx.open_table(META).map_err(w)?;
            m.insert(
                "last_applied",
                serde_json::to_vec(&meta.last_log_id).map_err(w)?.as_slice(),
            )
            .map_err(w)?;
            m.insert(
                "membership",
                serde_json::to_vec(&meta.last_membership)
                    .map_err(w)?
                    .as_slice(),
            )
            .map_err(w)?;
            let mut s = tx.open_table(SNAPSHOT).map_err(w)?;
            s.insert("meta", serde_json::to_vec(meta).map_err(w)?.as_slice())
                .map_err(w)?;
            s.insert("data", data).map_err(w)?;
            let mut requests = tx.open_table(REQUESTS).map_err(w)?;
            requests.retain(|_, _| false).map_err(w)?;
            for (id, rem) in &snap.requests {
                requests
                    .insert(id.as_str(), serde_json::to_vec(rem).map_err(w)?.as_slice())
                    .map_err(w)?;
            }
        }
        tx.commit().map_err(w)?;
        // everything pending is older than the snapshot, which replaced it
        lock(&self.pending_objects).clear();
        self.pending = Pending::default();
        self.load_remembered(snap.requests)?;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        let mut objects = BTreeMap::new();
        for (k, v) in snap.objects {
            let clear = self.keyring.from_stored(&k, v).map_err(r)?;
            objects.insert(k, Arc::new(shrink(clear)));
        }
        self.cache.reset(objects, revision_after(meta.last_log_id));
        Ok(())
    }

    /// Make this (empty) state machine start from a saved snapshot, as the
    /// only voter `node` of a new single-node cluster.
    pub fn restore(
        &mut self,
        data: &[u8],
        node: NodeId,
        addr: &str,
    ) -> Result<LogId, StorageError> {
        let snap: SnapshotData = serde_json::from_slice(data).map_err(r)?;
        let last = LogId::new(
            openraft::CommittedLeaderId::new(1, node),
            snap.revision / REVISIONS_PER_ENTRY,
        );
        let mut members = BTreeMap::new();
        members.insert(node, openraft::BasicNode::new(addr));
        let membership =
            openraft::Membership::new(vec![members.keys().copied().collect()], members);
        let meta = Meta {
            last_log_id: Some(last),
            last_membership: StoredMembership::new(Some(last), membership),
            snapshot_id: format!("restore-{}", snap.revision),
        };
        self.write_snapshot(&meta, data)?;
        Ok(last)
    }
}

impl Drop for StateMachine {
    /// Write what is pending, with fsync, so a clean restart has nothing to
    /// re-apply. Nothing depends on it: a crash re-applies from the log.
    fn drop(&mut self) {
        if self.pending.since.is_some() {
            if let Err(e) = self.flush(true) {
                tracing::warn!(error = %e, "writing applied objects at shutdown");
            }
        }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Objects written earlier in this call, so later writes see them.
        let mut batch: HashMap<String, Option<Arc<Value>>> = HashMap::new();
        let mut changes = Vec::new();
        let mut responses = Vec::new();
        let mut last = self.last_applied;
        let mut membership_changed = false;
        let mut fresh = Vec::new();
        for entry in entries {
            last = Some(entry.log_id);
            let index = entry.log_id.index;
            let payload = match entry.payload {
                EntryPayload::Normal(req) => EntryPayload::Normal(self.open_sealed(req)?),
                other => other,
            };
            let response = match payload {
                EntryPayload::Blank => Response::None,
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    membership_changed = true;
                    Response::None
                }
                EntryPayload::Normal(Request::Batch(reqs)) => {
                    let mut out = Vec::with_capacity(reqs.len());
                    for (pos, req) in reqs.into_iter().enumerate() {
                        out.push(self.apply_write(
                            req,
                            index,
                            pos as u64,
                            false,
                            &mut batch,
                            &mut changes,
                            &mut fresh,
                        ));
                    }
                    Response::Batch(out)
                }
                EntryPayload::Normal(req) => {
                    self.apply_write(req, index, 0, true, &mut batch, &mut changes, &mut fresh)
                }
            };
            responses.push(response);
        }

        // Not written to the file yet (see the module's doc): the entries
        // are already durable in the Raft log.
        let pending_keys = {
            let mut pending = lock(&self.pending_objects);
            pending.extend(batch);
            pending.len()
        };
        self.remember(fresh)?;
        self.last_applied = last;
        let since = *self.pending.since.get_or_insert_with(Instant::now);
        if membership_changed || pending_keys >= FLUSH_KEYS || since.elapsed() >= FLUSH_AFTER {
            self.flush(false)?;
        }
        self.cache.apply(changes, revision_after(last));
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // the builder reads the file: write what is pending first (if that
        // fails, the snapshot is of the file as it is, an older but
        // consistent state, and logs are purged only behind it)
        if let Err(e) = self.flush(false) {
            tracing::error!(error = %e, "writing applied objects before a snapshot");
        }
        self.snapshot_seq += 1;
        SnapshotBuilder {
            db: self.db.clone(),
            seq: self.snapshot_seq,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        // worth an operator's notice: this server fell behind the log the
        // leader keeps (it was down or cut off for a while)
        tracing::warn!(
            upto = ?meta.last_log_id,
            bytes = snapshot.get_ref().len(),
            "installing a snapshot from the leader"
        );
        self.write_snapshot(meta, snapshot.get_ref())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let tx = self.db.begin_read().map_err(r)?;
        let table = tx.open_table(SNAPSHOT).map_err(r)?;
        let meta: Option<Meta> = get_json(&table, "meta")?;
        let Some(meta) = meta else { return Ok(None) };
        let data = table
            .get("data")
            .map_err(r)?
            .map(|v| v.value().to_vec())
            .unwrap_or_default();
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

/// Builds a snapshot from one redb read transaction, so data and metadata
/// agree even while the state machine keeps applying.
pub struct SnapshotBuilder {
    db: Arc<Database>,
    seq: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let db = self.db.clone();
        let seq = self.seq;
        tokio::task::spawn_blocking(move || {
            let tx = db.begin_read().map_err(r)?;
            let meta_t = tx.open_table(META).map_err(r)?;
            let last_applied: Option<LogId> = get_json(&meta_t, "last_applied")?;
            let membership: StoredMembership = get_json(&meta_t, "membership")?.unwrap_or_default();
            let mut requests = Vec::new();
            for item in tx.open_table(REQUESTS).map_err(r)?.iter().map_err(r)? {
                let (k, v) = item.map_err(r)?;
                let rem: Remembered = serde_json::from_slice(v.value()).map_err(r)?;
                requests.push((k.value().to_string(), rem));
            }
            requests.sort_by_key(|(_, rem)| rem.seq);
            let table = tx.open_table(OBJECTS).map_err(r)?;
            let objects = table.iter().map_err(r)?.map(|item| {
                item.map(|(k, v)| (k.value().to_string(), v.value().to_vec()))
                    .map_err(r)
            });
            let data = snapshot_json(revision_after(last_applied), objects, &requests)?;
            drop(table);
            drop(tx);
            let snapshot_id = match last_applied {
                Some(l) => format!("{}-{}-{seq}", l.leader_id, l.index),
                None => format!("--{seq}"),
            };
            let meta = Meta {
                last_log_id: last_applied,
                last_membership: membership,
                snapshot_id,
            };
            let mut tx = db.begin_write().map_err(w)?;
            tx.set_durability(Durability::Immediate).map_err(w)?;
            {
                let mut s = tx.open_table(SNAPSHOT).map_err(w)?;
                s.insert("meta", serde_json::to_vec(&meta).map_err(w)?.as_slice())
                    .map_err(w)?;
                s.insert("data", data.as_slice()).map_err(w)?;
            }
            tx.commit().map_err(w)?;
            Ok(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            })
        })
        .await
        .map_err(w)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_remembered_answer_is_written_as_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let keyring = test_keyring(&dir);
        let sm = StateMachine::open(
            &dir.path().join("s.redb"),
            Arc::new(Cache::new(100)),
            keyring.clone(),
        )
        .unwrap();
        let responses = [
            Response::None,
            Response::Applied(Arc::new(json!({"kind": "Pod", "metadata": {"name": "p"}}))),
            Response::Rejected(Rejection::NestedBatch),
            Response::Batch(vec![
                Response::Applied(Arc::new(json!({"kind": "ConfigMap"}))),
                Response::None,
            ]),
        ];
        for response in responses {
            let bytes = serde_json::to_vec(&RememberedRef {
                seq: 7,
                key: "core/pods/d/p",
                response: sm.stored("core/pods/d/p", &response),
            })
            .unwrap();
            let read: Remembered = serde_json::from_slice(&bytes).unwrap();
            assert_eq!((read.seq, read.key.as_str()), (7, "core/pods/d/p"));
            assert_eq!(read.response, response);
        }
        // a Secret's answer is written sealed, and opens to what it was
        let key = "core/secrets/d/db";
        let secret = json!({"kind": "Secret", "data": {"password": "aHVudGVyMg=="}});
        let response = Response::Applied(Arc::new(secret.clone()));
        let bytes = serde_json::to_vec(&RememberedRef {
            seq: 8,
            key,
            response: sm.stored(key, &response),
        })
        .unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("aHVudGVyMg"));
        let read: Remembered = serde_json::from_slice(&bytes).unwrap();
        let Response::Applied(sealed) = read.response else {
            panic!("not an applied answer: {:?}", read.response)
        };
        assert_eq!(
            keyring
                .from_stored(key, Arc::unwrap_or_clone(sealed))
                .unwrap(),
            secret
        );
    }

    fn test_keyring(dir: &tempfile::TempDir) -> Arc<Keyring> {
        Arc::new(Keyring::load_or_create(&dir.path().join("keys.json")).unwrap())
    }

    fn put(key: &str, exists: Option<bool>) -> Request {
        Request::Put {
            key: key.into(),
            object: Arc::new(json!({"metadata": {"name": key}})),
            precondition: Precondition {
                exists,
                ..Default::default()
            },
        }
    }

    fn entry(index: u64, req: Request) -> Entry {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(req),
        }
    }

    #[tokio::test]
    async fn writes_in_one_entry_see_each_other_and_get_their_own_revisions() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(Cache::new(100));
        let mut sm = StateMachine::open(
            &dir.path().join("s.redb"),
            cache.clone(),
            test_keyring(&dir),
        )
        .unwrap();
        let batch = Request::Batch(vec![
            put("a", Some(false)),
            put("a", Some(false)),
            put("b", None),
            Request::Delete {
                key: "a".into(),
                precondition: Precondition::default(),
            },
            Request::Delete {
                key: "a".into(),
                precondition: Precondition::default(),
            },
        ]);
        let out = sm.apply([entry(7, batch)]).await.unwrap();
        let Response::Batch(rs) = &out[0] else {
            panic!("{out:?}")
        };
        assert!(matches!(&rs[0], Response::Applied(v) if revision_of(v) == 7000));
        assert_eq!(rs[1], Response::Rejected(Rejection::AlreadyExists));
        assert!(matches!(&rs[2], Response::Applied(v) if revision_of(v) == 7002));
        assert!(matches!(&rs[3], Response::Applied(v) if revision_of(v) == 7003));
        assert_eq!(rs[4], Response::Rejected(Rejection::NotFound));
        assert_eq!(cache.revision(), 7999);
        assert!(cache.get("a").is_none() && cache.get("b").is_some());
        let (changes, _) = cache.changes_after(0, 10).unwrap();
        assert_eq!(
            changes.iter().map(|c| c.revision).collect::<Vec<_>>(),
            vec![7000, 7002, 7003]
        );
        // the next entry's writes are above everything in this one
        let out = sm.apply([entry(8, put("c", None))]).await.unwrap();
        assert!(matches!(&out[0], Response::Applied(v) if revision_of(v) == 8000));
        drop(sm);
        // reopening loads the same state
        let cache = Arc::new(Cache::new(100));
        let sm = StateMachine::open(
            &dir.path().join("s.redb"),
            cache.clone(),
            test_keyring(&dir),
        )
        .unwrap();
        assert_eq!(cache.revision(), 8999);
        assert_eq!(cache.len(), 2);
        drop(sm);
    }

    #[tokio::test]
    async fn applies_reach_the_file_together_before_a_snapshot_and_at_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let cache = Arc::new(Cache::new(100));
        let mut sm = StateMachine::open(&path, cache.clone(), test_keyring(&dir)).unwrap();
        let del = |key: &str| Request::Delete {
            key: key.into(),
            precondition: Precondition::default(),
        };
        for (i, req) in [put("a", None), put("b", None), put("a", None), del("b")]
            .into_iter()
            .enumerate()
        {
            sm.apply([entry(i as u64 + 1, req)]).await.unwrap();
        }
        // not in the file yet: the latest value of each key waits
        let in_file = |db: &Database| {
            let tx = db.begin_read().unwrap();
            let objects = tx.open_table(OBJECTS).unwrap();
            let keys: Vec<String> = objects
                .iter()
                .unwrap()
                .map(|i| i.unwrap().0.value().to_string())
                .collect();
            let meta = tx.open_table(META).unwrap();
            let last: Option<LogId> = get_json(&meta, "last_applied").unwrap().flatten();
            (keys, last.map(|l| l.index))
        };
        assert_eq!(in_file(&sm.database()), (vec![], None));
        {
            let pending = sm.pending_objects();
            let pending = pending.lock().unwrap();
            assert_eq!(pending.len(), 2);
            assert_eq!(revision_of(pending["a"].as_ref().unwrap()), 3000);
            assert!(pending["b"].is_none());
        }
        // a snapshot is built from the file, so everything applied is written first
        let snap = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(4));
        let data: SnapshotData = serde_json::from_slice(snap.snapshot.get_ref()).unwrap();
        let objects: Vec<(&str, u64)> = data
            .objects
            .iter()
            .map(|(k, v)| (k.as_str(), revision_of(v)))
            .collect();
        assert_eq!(objects, vec![("a", 3000)]);
        assert_eq!(in_file(&sm.database()), (vec!["a".to_string()], Some(4)));
        assert!(sm.pending_objects().lock().unwrap().is_empty());
        // what is applied after it is written when the state machine stops
        sm.apply([entry(5, put("c", None))]).await.unwrap();
        drop(sm);
        let cache = Arc::new(Cache::new(100));
        let sm = StateMachine::open(&path, cache.clone(), test_keyring(&dir)).unwrap();
        assert_eq!(sm.last_applied.map(|l| l.index), Some(5));
        assert_eq!(cache.revision(), 5999);
        assert!(cache.get("a").is_some() && cache.get("c").is_some() && cache.get("b").is_none());
    }

    #[test]
    fn a_snapshot_copies_stored_objects_as_serde_would_write_them() {
        let objects = vec![
            (
                "/a".to_string(),
                json!({"kind": "Pod", "n": 1.5, "s": "q\"\u{e9}"}),
            ),
            ("/b".to_string(), json!({"z": [1, {"y": null}], "a": true})),
        ];
        let requests = vec![(
            "id-1".to_string(),
            Remembered {
                seq: 7,
                key: "/a".into(),
                response: Response::Rejected(Rejection::AlreadyExists),
            },
        )];
        let stored = objects
            .iter()
            .map(|(k, v)| Ok((k.clone(), serde_json::to_vec(v).unwrap())));
        let ours = snapshot_json(42, stored, &requests).unwrap();
        let serde = serde_json::to_vec(&SnapshotData {
            format: SNAPSHOT_FORMAT.into(),
            revision: 42,
            objects: objects.clone(),
            requests,
        })
        .unwrap();
        assert_eq!(
            String::from_utf8(ours).unwrap(),
            String::from_utf8(serde).unwrap()
        );
        let empty = snapshot_json(3, std::iter::empty(), &[]).unwrap();
        let back: SnapshotData = serde_json::from_slice(&empty).unwrap();
        assert!(back.objects.is_empty() && back.requests.is_empty() && back.revision == 3);
    }

    #[tokio::test]
    async fn a_transaction_applies_all_of_its_writes_or_none() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(Cache::new(100));
        let mut sm = StateMachine::open(
            &dir.path().join("s.redb"),
            cache.clone(),
            test_keyring(&dir),
        )
        .unwrap();
        sm.apply([entry(1, put("taken", Some(false)))])
            .await
            .unwrap();
        // the second write is refused, so the first must not land either
        let refused = Request::Txn(vec![put("svc", Some(false)), put("taken", Some(false))]);
        let out = sm.apply([entry(2, refused)]).await.unwrap();
        assert_eq!(
            out[0],
            Response::Rejected(Rejection::InTxn {
                index: 1,
                rejection: Box::new(Rejection::AlreadyExists)
            })
        );
        assert!(cache.get("svc").is_none());
        let ok = Request::Txn(vec![put("svc", Some(false)), put("ip", Some(false))]);
        let out = sm.apply([entry(3, ok)]).await.unwrap();
        let Response::Batch(rs) = &out[0] else {
            panic!("{out:?}")
        };
        assert!(matches!(&rs[0], Response::Applied(v) if revision_of(v) == 3000));
        assert!(matches!(&rs[1], Response::Applied(v) if revision_of(v) == 3001));
        assert!(cache.get("svc").is_some() && cache.get("ip").is_some());
        // a transaction inside a batch is refused
        let nested = Request::Batch(vec![Request::Txn(vec![put("x", None)])]);
        let out = sm.apply([entry(4, nested)]).await.unwrap();
        assert_eq!(
            out[0],
            Response::Batch(vec![Response::Rejected(Rejection::NestedBatch)])
        );
    }

    fn once(id: &str, req: Request) -> Request {
        Request::Once {
            id: id.into(),
            request: Box::new(req),
        }
    }

    #[tokio::test]
    async fn a_write_resent_under_its_request_id_is_applied_once() {
        let dir = tempfile::tempdir().unwrap();
        let keyring = test_keyring(&dir);
        let cache = Arc::new(Cache::new(100));
        let path = dir.path().join("s.redb");
        let mut sm = StateMachine::open(&path, cache.clone(), keyring.clone()).unwrap();
        let first = sm
            .apply([entry(1, once("r1", put("a", Some(false))))])
            .await
            .unwrap();
        assert!(matches!(&first[0], Response::Applied(v) if revision_of(v) == 1000));
        // the resend (a later entry, or inside a batch) gets the first answer
        let again = sm
            .apply([
                entry(2, once("r1", put("a", Some(false)))),
                entry(
                    3,
                    Request::Batch(vec![put("b", None), once("r1", put("a", Some(false)))]),
                ),
            ])
            .await
            .unwrap();
        assert_eq!(again[0], first[0]);
        let Response::Batch(rs) = &again[1] else {
            panic!("{again:?}")
        };
        assert_eq!(rs[1], first[0]);
        // a rejection is remembered too; a new id is a new write
        let out = sm
            .apply([entry(4, once("r2", put("a", Some(false))))])
            .await
            .unwrap();
        assert_eq!(out[0], Response::Rejected(Rejection::AlreadyExists));
        let out = sm
            .apply([entry(5, once("r2", put("c", None)))])
            .await
            .unwrap();
        assert_eq!(out[0], Response::Rejected(Rejection::AlreadyExists));
        assert!(cache.get("c").is_none());
        let (changes, _) = cache.changes_after(0, 10).unwrap();
        assert_eq!(
            changes
                .iter()
                .map(|c| (c.key.as_str(), c.revision))
                .collect::<Vec<_>>(),
            vec![("a", 1000), ("b", 3000)],
            "r1 applied once"
        );

        // a restart remembers (the table is written with the objects)
        drop(sm);
        let mut sm = StateMachine::open(&path, Arc::new(Cache::new(100)), keyring.clone()).unwrap();
        let out = sm
            .apply([entry(6, once("r1", put("a", Some(false))))])
            .await
            .unwrap();
        assert_eq!(out[0], first[0]);

        // and so does a server that installs a snapshot
        let snap = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let dir2 = tempfile::tempdir().unwrap();
        let cache2 = Arc::new(Cache::new(100));
        let mut other =
            StateMachine::open(&dir2.path().join("s.redb"), cache2.clone(), keyring).unwrap();
        other
            .install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        let out = other
            .apply([entry(7, once("r1", put("a", Some(false))))])
            .await
            .unwrap();
        assert_eq!(out[0], first[0]);
        let out = other
            .apply([entry(8, once("r3", put("d", None)))])
            .await
            .unwrap();
        assert!(matches!(&out[0], Response::Applied(v) if revision_of(v) == 8000));
    }
}
