//! The replicated object store: openraft over a write-ahead log and redb.
//!
//! ```text
//!  write ──► Raft::client_write ──► LogStore::append (WAL, fdatasync)
//!                                       │ committed
//!                                       ▼
//!                    StateMachine::apply (preconditions; redb later, no fsync)
//!                                       │
//!                                       ▼
//!                    Cache (objects + change window) ──► lists, gets, watches
//! ```
//!
//! Objects are JSON documents keyed `group/resource/namespace/name` (core
//! group is `core`, cluster-scoped objects have an empty namespace). The Raft
//! log index of the entry that wrote an object is its `resourceVersion`.

// openraft's storage traits return its `StorageError` (over 200 bytes) by
// value; the store follows those signatures.
#![allow(clippy::result_large_err)]

pub mod cache;
pub mod cluster;
pub mod encryption;
pub mod log_store;
pub mod network;
pub mod state_machine;
pub mod types;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Config, Raft, SnapshotPolicy};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

pub use cache::{Cache, Change, ChangeKind, Expired, ListPage};
pub use state_machine::{SnapshotData, SNAPSHOT_FORMAT};
pub use types::{NodeId, Precondition, Rejection, Request, Response, TypeConfig};

use log_store::LogStore;

impl From<openraft::StorageError<NodeId>> for StoreError {
    fn from(e: openraft::StorageError<NodeId>) -> Self {
        StoreError::Storage(Box::new(e))
    }
}
use state_machine::StateMachine;

/// The Raft handle type.
pub type RaftHandle = Raft<TypeConfig>;

/// File names inside the data directory.
/// The Raft log's directory (segments of the write-ahead log).
pub const LOG_DIR: &str = "wal";
/// Where wasmkube before the write-ahead log kept the Raft log (moved into
/// [`LOG_DIR`] on first open).
pub const OLD_LOG_FILE: &str = "raft-log.redb";
const STATE_FILE: &str = "state.redb";

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The state machine refused the write; nothing changed.
    #[error("write rejected: {0:?}")]
    Rejected(Rejection),
    /// This server is not the leader; `leader` is the address to retry at, if known.
    #[error("this server is not the raft leader (leader: {leader:?})")]
    NotLeader {
        leader: Option<String>,
        leader_id: Option<NodeId>,
    },
    /// No leader could be reached within the retry time: nothing was
    /// written; the client may retry later.
    #[error("no raft leader is reachable: {0}")]
    NoLeader(String),
    /// The write was sent but its outcome is unknown (the leader did not
    /// answer in time): it may or may not have been applied.
    #[error("the write's outcome is unknown: {0}")]
    Indeterminate(String),
    /// Opening a redb file failed.
    #[error("failed to open {path}")]
    Open {
        path: String,
        #[source]
        source: redb::Error,
    },
    /// Opening the Raft log failed.
    #[error("failed to open the Raft log")]
    Log(#[from] log_store::WalError),
    /// Storage I/O failed.
    #[error("storage error")]
    Storage(#[source] Box<openraft::StorageError<NodeId>>),
    /// Raft itself failed (shut down, fatal error, initialization).
    #[error("raft: {0}")]
    Raft(String),
    /// A snapshot file could not be read.
    #[error("invalid snapshot: {0}")]
    Snapshot(String),
}

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// This server's Raft id.
    pub node_id: NodeId,
    /// The address peers reach this server's API at (host:port).
    pub advertise: String,
    /// How many changes the watch window keeps.
    pub history: usize,
    /// How long the watch window keeps a change.
    pub history_age: std::time::Duration,
    /// The HTTPS client for Raft RPCs: trusts the server CA and presents
    /// this server's peer certificate.
    pub peer_http: reqwest::Client,
    /// Build a snapshot (and purge the log behind it) every this many entries.
    pub snapshot_logs: u64,
    /// A pristine store initializes a one-voter cluster of itself (true),
    /// or waits to be added to an existing cluster (false: `--join`).
    pub bootstrap: bool,
    /// Raft timing.
    pub timing: Timing,
    /// The keys Secrets are sealed with before they enter the log.
    pub keyring: Arc<encryption::Keyring>,
}

/// An open store: the Raft node plus the watch cache it applies into.
#[derive(Clone)]
pub struct Store {
    node_id: NodeId,
    /// The address peers reach this server at.
    advertise: String,
    raft: RaftHandle,
    /// Peer HTTPS client: forwards writes and read-index requests to the leader.
    peer_http: reqwest::Client,
    /// Turns true when the leader says this server was removed.
    removed: Arc<tokio::sync::watch::Sender<bool>>,
    cache: Arc<Cache>,
    /// Writes waiting for the batcher.
    writes: mpsc::Sender<Pending>,
    keyring: Arc<encryption::Keyring>,
    /// The state machine's redb file (the stored, sealed form).
    db: Arc<redb::Database>,
    /// Applied objects the state machine has not written to `db` yet.
    pending: state_machine::PendingObjects,
}

/// A write waiting to be replicated, and where its result goes.
struct Pending {
    req: Request,
    reply: oneshot::Sender<Result<(Response, u64), StoreError>>,
}

fn raft_failure(e: &RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> StoreError {
    match e {
        // openraft answers this only for entries never appended, or
        // appended and then truncated: never applied, safe to retry
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => StoreError::NotLeader {
            leader: f.leader_node.as_ref().map(|n| n.addr.clone()),
            leader_id: f.leader_id,
        },
        other => StoreError::Raft(other.to_string()),
    }
}

/// The object as applied, shared with the cache that holds it (a copy
/// would be deep: most callers only encode it or drop it).
fn outcome(r: Response) -> Result<Arc<Value>, StoreError> {
    match r {
        Response::Applied(v) => Ok(v),
        Response::Rejected(r) => Err(StoreError::Rejected(r)),
        Response::None | Response::Batch(_) => {
            Err(StoreError::Raft("write applied without a result".into()))
        }
    }
}

/// Group commit: take every write queued right now (up to [`types::MAX_BATCH`])
/// into one log entry, with one entry in flight at a time. Under load batches
/// grow, so one fsync carries many writes; alone, a write goes straight through.
async fn batcher(raft: RaftHandle, mut rx: mpsc::Receiver<Pending>) {
    while let Some(first) = rx.recv().await {
        let mut pending = vec![first];
        while pending.len() < types::MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => pending.push(p),
                Err(_) => break,
            }
        }
        let (mut reqs, replies): (Vec<Request>, Vec<_>) =
            pending.into_iter().map(|p| (p.req, p.reply)).unzip();
        let req = if reqs.len() == 1 {
            reqs.remove(0)
        } else {
            Request::Batch(reqs)
        };
        match raft.client_write(req).await {
            Ok(resp) => {
                let index = resp.log_id.index;
                let responses = match resp.data {
                    Response::Batch(v) => v,
                    single => vec![single],
                };
                for (reply, r) in replies.into_iter().zip(responses) {
                    let _ = reply.send(Ok((r, index)));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(raft_failure(&e)));
                }
            }
        }
    }
}

/// Raft timing, in milliseconds. The defaults suit 2-core machines that
/// fsync every entry: a heartbeat every 250 ms, an election after 300 to
/// 450 ms without one (plus the old leader's lease of the maximum).
///
/// openraft (0.9) also uses the heartbeat interval as the deadline for
/// every append the leader sends. With 100 ms, a loaded follower whose
/// fsync took longer never acknowledged an append: each retry carried new
/// entries and timed out again, so it never caught up and membership
/// changes that needed it hung.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat_ms: 250,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 450,
        }
    }
}

fn raft_config(snapshot_logs: u64, timing: Timing) -> Result<Arc<Config>, StoreError> {
    let snapshot_logs = snapshot_logs.max(1);
    let config = Config {
        cluster_name: "wasmkube".into(),
        heartbeat_interval: timing.heartbeat_ms,
        election_timeout_min: timing.election_timeout_min_ms,
        election_timeout_max: timing.election_timeout_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_logs),
        max_in_snapshot_log_to_keep: (snapshot_logs / 10).min(1_000),
        replication_lag_threshold: snapshot_logs.max(5_000),
        // A chunk goes as JSON, where a byte takes up to four: 1 MiB
        // chunks keep each RPC a few megabytes. openraft's 200 ms for one
        // was too short on a loaded machine: a chunk that always took
        // longer failed the whole snapshot, and a follower behind the
        // purged log never caught up.
        snapshot_max_chunk_size: 1 << 20,
        install_snapshot_timeout: 5_000,
        ..Default::default()
    };
    Ok(Arc::new(
        config
            .validate()
            .map_err(|e| StoreError::Raft(e.to_string()))?,
    ))
}

fn open_log(dir: &Path) -> Result<LogStore, StoreError> {
    let old = dir.join(OLD_LOG_FILE);
    if old.exists() {
        log_store::migrate_redb(&old, &dir.join(LOG_DIR))?;
    }
    Ok(LogStore::open(&dir.join(LOG_DIR))?)
}

impl Store {
    /// Open the store in `dir`. A node that has never been part of a cluster
    /// initializes a single-voter cluster of itself: the same membership code
    /// path later used to add voters.
    pub async fn open(dir: &Path, config: &StoreConfig) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Raft(format!("create {}: {e}", dir.display())))?;
        let cache = Arc::new(Cache::with_max_age(config.history, config.history_age));
        let log = open_log(dir)?;
        let sm = StateMachine::open(&dir.join(STATE_FILE), cache.clone(), config.keyring.clone())?;
        let db = sm.database();
        let pending = sm.pending_objects();
        let raft = Raft::new(
            config.node_id,
            raft_config(config.snapshot_logs, config.timing)?,
            network::Network::new(config.peer_http.clone()),
            log,
            sm,
        )
        .await
        .map_err(|e| StoreError::Raft(e.to_string()))?;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| StoreError::Raft(e.to_string()))?;
        if !initialized && config.bootstrap {
            let mut members = BTreeMap::new();
            members.insert(config.node_id, BasicNode::new(&config.advertise));
            raft.initialize(members)
                .await
                .map_err(|e| StoreError::Raft(e.to_string()))?;
        }
        if initialized || config.bootstrap {
            let one_voter = raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .voter_ids()
                .count()
                <= 1;
            // one voter elects itself at once; a member of a bigger cluster
            // may start while the others are down, and serves once they are
            // back (reads and writes wait for a leader, or answer 503)
            if one_voter {
                raft.wait(Some(Duration::from_secs(30)))
                    .metrics(|m| m.current_leader.is_some(), "a leader is known")
                    .await
                    .map_err(|e| StoreError::Raft(e.to_string()))?;
            }
        }
        let (writes, rx) = mpsc::channel(4 * types::MAX_BATCH);
        tokio::spawn(batcher(raft.clone(), rx));
        Ok(Self {
            node_id: config.node_id,
            advertise: config.advertise.clone(),
            removed: Arc::new(tokio::sync::watch::channel(false).0),
            peer_http: config.peer_http.clone(),
            raft,
            cache,
            writes,
            keyring: config.keyring.clone(),
            db,
            pending,
        })
    }

    /// The encryption keys.
    pub fn keyring(&self) -> &Arc<encryption::Keyring> {
        &self.keyring
    }

    /// Seal the objects of `req` that are encrypted at rest.
    fn seal(&self, req: Request) -> Request {
        match req {
            Request::Put {
                key,
                object,
                precondition,
            } => {
                let sealed = match self.keyring.to_stored(&key, &object) {
                    std::borrow::Cow::Owned(sealed) => Some(sealed),
                    std::borrow::Cow::Borrowed(_) => None,
                };
                Request::Put {
                    object: sealed.map_or(object, Arc::new),
                    key,
                    precondition,
                }
            }
            Request::Batch(reqs) => {
                Request::Batch(reqs.into_iter().map(|r| self.seal(r)).collect())
            }
            Request::Txn(reqs) => Request::Txn(reqs.into_iter().map(|r| self.seal(r)).collect()),
            Request::Once { id, request } => Request::Once {
                id,
                request: Box::new(self.seal(*request)),
            },
            other => other,
        }
    }

    /// The stored form (as redb holds it, sealed where encrypted) of every
    /// object whose key starts with `prefix`, including applied objects the
    /// state machine has not written to the file yet (in the form it will
    /// write them).
    pub fn stored(&self, prefix: &str) -> Result<Vec<(String, Value)>, StoreError> {
        use redb::ReadableDatabase;
        let fail =
            |e: &dyn std::fmt::Display| StoreError::Raft(format!("reading the state file: {e}"));
        // held while reading the file, so a flush cannot move objects
        // from one to the other in between
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let tx = self.db.begin_read().map_err(|e| fail(&e))?;
        let table = tx
            .open_table(state_machine::OBJECTS)
            .map_err(|e| fail(&e))?;
        let mut out = BTreeMap::new();
        for item in table.range(prefix..).map_err(|e| fail(&e))? {
            let (k, v) = item.map_err(|e| fail(&e))?;
            if !k.value().starts_with(prefix) {
                break;
            }
            let value: Value = serde_json::from_slice(v.value()).map_err(|e| fail(&e))?;
            out.insert(k.value().to_string(), value);
        }
        for (key, value) in pending.iter().filter(|(k, _)| k.starts_with(prefix)) {
            match value {
                Some(v) => out.insert(key.clone(), self.keyring.to_stored(key, v).into_owned()),
                None => out.remove(key),
            };
        }
        Ok(out.into_iter().collect())
    }

    /// The watch cache (reads, lists, watches).
    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    /// The Raft handle (peer RPC endpoints, metrics).
    pub fn raft(&self) -> &RaftHandle {
        &self.raft
    }

    /// Replicate `req`, wait until it is committed, fsynced and applied, and
    /// return the object as stored. Concurrent writes are grouped into one
    /// log entry (one fsync) by the batcher.
    /// On any server: a write on a follower is forwarded to the leader (one
    /// hop), and returns once this server has applied it too.
    pub async fn write(&self, req: Request) -> Result<Arc<Value>, StoreError> {
        outcome(self.submit(self.seal(req)).await?)
    }

    /// Replicate the writes as one all-or-nothing transaction (its own log
    /// entry) and return each object as stored. If one write is refused,
    /// nothing is applied and the error is [`Rejection::InTxn`].
    pub async fn txn(&self, reqs: Vec<Request>) -> Result<Vec<Arc<Value>>, StoreError> {
        match self.submit(self.seal(Request::Txn(reqs))).await? {
            Response::Batch(rs) => rs.into_iter().map(outcome).collect(),
            other => outcome(other).map(|v| vec![v]),
        }
    }

    /// Apply a sealed write here, if this server leads: a transaction as its
    /// own entry, anything else through the batcher. Returns the result and
    /// the entry's log index.
    pub(crate) async fn write_here(&self, req: Request) -> Result<(Response, u64), StoreError> {
        let write = async {
            if req.is_txn() {
                let resp = self
                    .raft
                    .client_write(req)
                    .await
                    .map_err(|e| raft_failure(&e))?;
                return Ok((resp.data, resp.log_id.index));
            }
            let (reply, rx) = oneshot::channel();
            self.writes
                .send(Pending { req, reply })
                .await
                .map_err(|_| StoreError::Raft("the store is shut down".into()))?;
            rx.await
                .map_err(|_| StoreError::Raft("the store is shut down".into()))?
        };
        match tokio::time::timeout(cluster::WRITE_TIMEOUT, write).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Indeterminate(format!(
                "not committed within {:?} (is a quorum of servers reachable?)",
                cluster::WRITE_TIMEOUT
            ))),
        }
    }

    /// This server's Raft id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Resolves when the Raft core has stopped on its own: a fatal error,
    /// such as a failed fsync of the log. Nothing can be written after it,
    /// and retrying an fsync after a failure may report success for data
    /// the kernel already dropped, so the server must exit and start again
    /// from what is on disk (as etcd and PostgreSQL do). Returns the error.
    pub async fn stopped(&self) -> String {
        let mut metrics = self.raft.metrics();
        let failed = metrics
            .wait_for(|m| m.running_state.is_err())
            .await
            .ok()
            .and_then(|m| m.running_state.clone().err());
        match failed {
            Some(fatal) => fatal.to_string(),
            None => "the Raft core stopped".to_string(),
        }
    }

    /// Stop Raft; every acknowledged write is already durable.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }

    /// A consistent point-in-time copy of every object, Secrets sealed.
    pub fn snapshot(&self) -> SnapshotData {
        let (revision, objects) = self.cache.dump();
        SnapshotData {
            format: SNAPSHOT_FORMAT.to_string(),
            revision,
            objects: objects
                .into_iter()
                .map(|(k, v)| {
                    let stored = self.keyring.to_stored(&k, &v).into_owned();
                    (k, stored)
                })
                .collect(),
            requests: Vec::new(),
        }
    }
}

/// Create a new data directory `dir` whose store starts with exactly the
/// state in `snapshot` (a [`SnapshotData`] JSON document), as a single-node
/// cluster whose revisions continue after the snapshot's.
pub async fn restore(
    snapshot: &[u8],
    dir: &Path,
    node_id: NodeId,
    advertise: &str,
    keyring: Arc<encryption::Keyring>,
) -> Result<u64, StoreError> {
    let snap: SnapshotData =
        serde_json::from_slice(snapshot).map_err(|e| StoreError::Snapshot(e.to_string()))?;
    if snap.format != SNAPSHOT_FORMAT {
        return Err(StoreError::Snapshot(format!(
            "format is {:?}, expected {SNAPSHOT_FORMAT:?}",
            snap.format
        )));
    }
    let have = keyring.names();
    if let Some((key, name)) = snap.objects.iter().find_map(|(k, v)| {
        encryption::key_name(v)
            .filter(|n| !have.iter().any(|h| h == n))
            .map(|n| (k.clone(), n.to_string()))
    }) {
        return Err(StoreError::Snapshot(
            encryption::EncryptionError::MissingKey {
                key,
                name,
                path: keyring.path().into(),
            }
            .to_string(),
        ));
    }
    if dir.join(LOG_DIR).exists()
        || dir.join(OLD_LOG_FILE).exists()
        || dir.join(STATE_FILE).exists()
    {
        return Err(StoreError::Snapshot(format!(
            "{} already holds a store; restore needs a new data directory",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| StoreError::Snapshot(format!("create {}: {e}", dir.display())))?;
    let cache = Arc::new(Cache::new(1));
    let mut sm = StateMachine::open(&dir.join(STATE_FILE), cache, keyring)?;
    let last = sm.restore(snapshot, node_id, advertise)?;
    let log = open_log(dir)?;
    let vote = openraft::Vote::new_committed(last.leader_id.term, node_id);
    log.restore_marker(&vote, last).await?;
    Ok(snap.revision)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::testing::{StoreBuilder, Suite};

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, StateMachine), openraft::StorageError<NodeId>>
        {
            let dir = tempfile::tempdir().expect("tempdir");
            let log = LogStore::open(&dir.path().join(LOG_DIR)).expect("open log");
            let keyring = Arc::new(
                encryption::Keyring::load_or_create(&dir.path().join("keys.json")).expect("keys"),
            );
            let sm = StateMachine::open(
                &dir.path().join(STATE_FILE),
                Arc::new(Cache::new(100)),
                keyring,
            )?;
            Ok((dir, log, sm))
        }
    }

    #[test]
    fn openraft_storage_suite_passes_on_the_wal_and_the_state_machine() {
        Suite::test_all(Builder).expect("openraft storage suite");
    }
}
