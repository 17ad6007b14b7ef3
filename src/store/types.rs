//! The Raft type configuration and the commands replicated through the log.

use std::io::Cursor;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

openraft::declare_raft_types!(
    /// Raft types for the wasmkube store.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A Raft node id.
pub type NodeId = u64;
/// A Raft log id for this configuration.
pub type LogId = openraft::LogId<NodeId>;
/// Stored membership for this configuration.
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
/// Storage errors for this configuration.
pub type StorageError = openraft::StorageError<NodeId>;

/// Conditions checked by the state machine before it applies a write, so that
/// optimistic concurrency is decided in log order, not by racing API handlers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Precondition {
    /// `Some(false)`: the key must not exist (create). `Some(true)`: it must exist.
    pub exists: Option<bool>,
    /// The stored object's resourceVersion must equal this.
    pub resource_version: Option<u64>,
    /// The stored object's `metadata.uid` must equal this.
    pub uid: Option<String>,
    /// The namespace must exist and not be terminating (creates of namespaced objects).
    pub namespace: Option<String>,
}

/// A write replicated through Raft. The state machine stamps the entry's log
/// index into `metadata.resourceVersion`, so revisions are global and monotonic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Create or replace the object stored under `key`.
    Put {
        key: String,
        /// Shared, so that a write kept for a retry is not a deep copy.
        /// Parsed with room for exactly its fields: the cache keeps it.
        #[serde(deserialize_with = "crate::json::shrunk_arc")]
        object: Arc<Value>,
        precondition: Precondition,
    },
    /// Remove the object stored under `key`.
    Delete {
        key: String,
        precondition: Precondition,
    },
    /// Several writes in one log entry (group commit), applied in order; each
    /// is decided and revisioned on its own.
    Batch(Vec<Request>),
    /// Several writes decided together, all or nothing: each is checked
    /// against the state the earlier ones leave, and if any is refused none
    /// is applied. Always its own log entry (never inside a batch).
    Txn(Vec<Request>),
    /// A write with a request id, applied at most once: the state machine
    /// remembers the answer to each id (the last [`REMEMBERED_REQUESTS`]),
    /// and a repeat of an id gets that answer without being applied again.
    /// A server forwarding a write resends it under the same id when the
    /// leader's answer was lost.
    Once { id: String, request: Box<Request> },
}

/// Request ids the state machine remembers (a resend comes within seconds).
pub const REMEMBERED_REQUESTS: usize = 10_000;

/// Revisions each log entry spans: the writes of entry `i` get revisions
/// `i * 1000 + position`, so one entry (one fsync) can carry many writes
/// while every write keeps its own global, monotonic resourceVersion.
pub const REVISIONS_PER_ENTRY: u64 = 1000;

/// Most writes one entry carries.
pub const MAX_BATCH: usize = (REVISIONS_PER_ENTRY - 1) as usize;

/// The revision of the write at `position` in log entry `index`.
pub fn revision(index: u64, position: u64) -> u64 {
    index * REVISIONS_PER_ENTRY + position
}

/// The store's revision once everything up to `last` is applied: above every
/// write of that entry, below every write of the next.
pub fn revision_after(last: Option<LogId>) -> u64 {
    last.map(|l| revision(l.index, REVISIONS_PER_ENTRY - 1))
        .unwrap_or(0)
}

impl Request {
    /// A transaction, with or without a request id: always its own entry.
    pub fn is_txn(&self) -> bool {
        match self {
            Request::Txn(_) => true,
            Request::Once { request, .. } => request.is_txn(),
            _ => false,
        }
    }
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Put { key, .. } => write!(f, "put {key}"),
            Request::Delete { key, .. } => write!(f, "delete {key}"),
            Request::Batch(reqs) => write!(f, "batch of {}", reqs.len()),
            Request::Txn(reqs) => write!(f, "transaction of {}", reqs.len()),
            Request::Once { id, request } => write!(f, "{request} (request {id})"),
        }
    }
}

/// Why the state machine refused a write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    AlreadyExists,
    NotFound,
    /// The stored object has another resourceVersion than the precondition.
    Conflict {
        current: u64,
    },
    UidMismatch {
        current: String,
    },
    NamespaceNotFound,
    NamespaceTerminating,
    /// A batch inside a batch (never sent by this store).
    NestedBatch,
    /// Write `index` of a transaction was refused, so none was applied.
    InTxn {
        index: usize,
        rejection: Box<Rejection>,
    },
}

/// The result of applying one log entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Blank or membership entries.
    None,
    /// The object as stored (for deletes: as it was, stamped with the deletion
    /// revision): the state machine's own copy, shared.
    Applied(Arc<Value>),
    Rejected(Rejection),
    /// One response per write of a [`Request::Batch`].
    Batch(Vec<Response>),
}

/// Set `metadata.resourceVersion` on a JSON object.
pub fn stamp_revision(object: &mut Value, revision: u64) {
    if let Some(obj) = object.as_object_mut() {
        let meta = obj
            .entry("metadata")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(meta) = meta.as_object_mut() {
            meta.insert(
                "resourceVersion".to_string(),
                Value::String(revision.to_string()),
            );
        }
    }
}

/// Read `metadata.resourceVersion` as a number (0 when absent or malformed).
pub fn revision_of(object: &Value) -> u64 {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}
