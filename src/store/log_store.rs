//! The Raft log, vote and purge marker, persisted in a redb file.
//!
//! Every append is one redb transaction committed with `Durability::Immediate`
//! (fsync) before openraft is told the entries are flushed, so an acknowledged
//! write survives `kill -9`. This is the one fsync on a write's path: the
//! state machine applies without one and is rebuilt from this log after a
//! crash.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::types::{LogId, NodeId, StorageError, TypeConfig};

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// A log write slower than this is logged (see `append`).
const SLOW_LOG_WRITE: std::time::Duration = std::time::Duration::from_millis(50);

type Entry = openraft::Entry<TypeConfig>;

/// Log storage over redb. Cheap to clone: the reader shares the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

fn io_err(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError {
    StorageError::from_io_error(subject, verb, std::io::Error::other(e.to_string()))
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    io_err(ErrorSubject::Logs, ErrorVerb::Read, e)
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    io_err(ErrorSubject::Logs, ErrorVerb::Write, e)
}

/// Run blocking redb work off the async executor.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f).await.map_err(write_err)?
}

impl LogStore {
    /// Open (or create) the log database at `path`.
    pub fn open(path: &Path) -> Result<Self, redb::Error> {
        let db = Database::create(path)?;
        let tx = db.begin_write()?;
        tx.open_table(LOGS)?;
        tx.open_table(META)?;
        tx.commit()?;
        Ok(Self { db: Arc::new(db) })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError> {
        let tx = self.db.begin_read().map_err(read_err)?;
        let table = tx.open_table(META).map_err(read_err)?;
        match table.get(key).map_err(read_err)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(read_err)?)),
            None => Ok(None),
        }
    }

    async fn put_meta<T: serde::Serialize>(
        &self,
        key: &'static str,
        value: &T,
        durability: Durability,
    ) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(value).map_err(write_err)?;
        let db = self.db.clone();
        blocking(move || {
            let mut tx = db.begin_write().map_err(write_err)?;
            tx.set_durability(durability).map_err(write_err)?;
            {
                let mut table = tx.open_table(META).map_err(write_err)?;
                table.insert(key, bytes.as_slice()).map_err(write_err)?;
            }
            tx.commit().map_err(write_err)
        })
        .await
    }

    /// Write the state a freshly restored data directory starts from: the vote
    /// and the purge marker that say "everything up to `last` is in the snapshot".
    pub async fn restore_marker(
        &self,
        vote: &Vote<NodeId>,
        last: LogId,
    ) -> Result<(), StorageError> {
        self.put_meta("vote", vote, Durability::Immediate).await?;
        self.put_meta("last_purged", &Some(last), Durability::Immediate)
            .await
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(x) => Some(x.saturating_add(1)),
            Bound::Excluded(x) => Some(*x),
            Bound::Unbounded => None,
        };
        let db = self.db.clone();
        blocking(move || {
            let tx = db.begin_read().map_err(read_err)?;
            let table = tx.open_table(LOGS).map_err(read_err)?;
            let iter = match end {
                Some(end) if end <= start => return Ok(Vec::new()),
                Some(end) => table.range(start..end).map_err(read_err)?,
                None => table.range(start..).map_err(read_err)?,
            };
            let mut out = Vec::new();
            for item in iter {
                let (_, v) = item.map_err(read_err)?;
                out.push(serde_json::from_slice(v.value()).map_err(read_err)?);
            }
            Ok(out)
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.get_meta("last_purged")?.flatten();
        let db = self.db.clone();
        let last_in_log: Option<LogId> = blocking(move || {
            let tx = db.begin_read().map_err(read_err)?;
            let table = tx.open_table(LOGS).map_err(read_err)?;
            let last = match table.last().map_err(read_err)? {
                Some((_, v)) => {
                    let e: Entry = serde_json::from_slice(v.value()).map_err(read_err)?;
                    Some(e.log_id)
                }
                None => None,
            };
            Ok(last)
        })
        .await?;
        let last_log_id = last_in_log.or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.put_meta("vote", vote, Durability::Immediate).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.get_meta("vote")
    }

    /// The committed index is a hint that lets a restart re-apply without an
    /// election; it becomes durable with the next append, and losing it only
    /// means waiting for the leader to commit again.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.put_meta("committed", &committed, Durability::None)
            .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>("committed")?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rows = Vec::new();
        for e in entries {
            rows.push((e.log_id.index, serde_json::to_vec(&e).map_err(write_err)?));
        }
        let db = self.db.clone();
        let started = std::time::Instant::now();
        let count = rows.len();
        let res = blocking(move || {
            let mut tx = db.begin_write().map_err(write_err)?;
            tx.set_durability(Durability::Immediate)
                .map_err(write_err)?;
            {
                let mut table = tx.open_table(LOGS).map_err(write_err)?;
                for (index, bytes) in &rows {
                    table.insert(*index, bytes.as_slice()).map_err(write_err)?;
                }
            }
            tx.commit().map_err(write_err)
        })
        .await;
        let took = started.elapsed();
        if took > SLOW_LOG_WRITE {
            // as etcd's "slow fdatasync": a disk this slow delays every
            // commit, and a follower this slow misses the leader's
            // replication deadline
            tracing::warn!(?took, entries = count, "slow Raft log write (fsync)");
        }
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || {
            let mut tx = db.begin_write().map_err(write_err)?;
            tx.set_durability(Durability::Immediate)
                .map_err(write_err)?;
            {
                let mut table = tx.open_table(LOGS).map_err(write_err)?;
                table
                    .retain_in(log_id.index.., |_, _| false)
                    .map_err(write_err)?;
            }
            tx.commit().map_err(write_err)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(&Some(log_id)).map_err(write_err)?;
        let db = self.db.clone();
        blocking(move || {
            let mut tx = db.begin_write().map_err(write_err)?;
            tx.set_durability(Durability::Immediate)
                .map_err(write_err)?;
            {
                let mut meta = tx.open_table(META).map_err(write_err)?;
                meta.insert("last_purged", bytes.as_slice())
                    .map_err(write_err)?;
                let mut table = tx.open_table(LOGS).map_err(write_err)?;
                table
                    .retain_in(..=log_id.index, |_, _| false)
                    .map_err(write_err)?;
            }
            tx.commit().map_err(write_err)
        })
        .await
    }
}
