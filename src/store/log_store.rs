//! The Raft log: an append-only write-ahead log in segment files, as etcd's
//! WAL, holding the entries, the vote, the committed hint and the purge
//! marker.
//!
//! `DIR/wal/SEQ.wal` are the segments, in order. Each is a run of records,
//! framed as `length (u32 LE) | CRC-32 of the payload (u32 LE) | payload`,
//! the payload a JSON [`Record`]. Every change is a record appended to the
//! last segment: a truncation or a purge is a record too, so nothing is
//! rewritten in place. An append writes its entries with one `write` and
//! one `fdatasync` before openraft is told they are flushed, so an
//! acknowledged write survives `kill -9` and power loss. This is the one
//! fsync on a write's path: the state machine is rebuilt from this log
//! after a crash.
//!
//! Opening replays the records into an index (log index → where its entry
//! is); entries are read back from the file when asked for. A record cut
//! short at the end of the last segment (a crash in the middle of an
//! append, which was never acknowledged) is dropped; a bad record anywhere
//! else, a damaged record followed by others included, is an error naming
//! the segment and offset.
//!
//! A segment past [`SEGMENT_BYTES`] is closed and a new one starts with
//! the current vote, committed hint and purge marker, so a closed segment
//! is deleted whole once every entry in it is purged.
//!
//! A segment's blocks are reserved when it starts (`fallocate`, as etcd
//! preallocates its WAL): an append then writes into the file's length
//! instead of growing it, so its `fdatasync` need not also write a new
//! file size. The reserved space reads as zeros; a record's payload is
//! JSON and never ends in a zero byte, so a reader drops a segment's
//! trailing zeros before it reads the records, and a record cut short
//! inside the reserved space ends the log as one cut short at the end of
//! the file does.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::File;
use std::io::{Read, Write};
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, Vote};
use serde::{Deserialize, Serialize};

use super::types::{LogId, NodeId, StorageError, TypeConfig};

/// A segment this long is closed and a new one started.
pub const SEGMENT_BYTES: u64 = 16 << 20;
/// A log write slower than this is logged (see `append`).
const SLOW_LOG_WRITE: std::time::Duration = std::time::Duration::from_millis(50);
/// Length and CRC before each record.
const FRAME: usize = 8;
/// No record is longer (a corrupt length field must not allocate gigabytes).
const MAX_RECORD: usize = 1 << 30;

type Entry = openraft::Entry<TypeConfig>;

/// One record of the log, as stored.
#[derive(Debug, Deserialize)]
enum Record {
    Entry(Entry),
    Vote(Vote<NodeId>),
    Committed(Option<LogId>),
    /// Every entry up to and including this one is gone.
    Purged(LogId),
    /// Every entry from this index on is gone.
    Truncated(u64),
}

/// [`Record`] for writing, borrowing the entry.
#[derive(Serialize)]
enum RecordRef<'a> {
    Entry(&'a Entry),
    Vote(&'a Vote<NodeId>),
    Committed(&'a Option<LogId>),
    Purged(&'a LogId),
    Truncated(u64),
}

/// Why the log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: bad record at offset {offset}: {reason} (the Raft log is damaged; restore from a snapshot or another server)")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
}

/// Where an entry's record is.
#[derive(Debug, Clone, Copy)]
struct Loc {
    segment: u64,
    offset: u64,
    len: u32,
    log_id: LogId,
}

struct Segment {
    seq: u64,
    path: PathBuf,
    file: Arc<File>,
    /// Where the next record goes.
    end: u64,
    /// The highest entry index ever written to it.
    last_index: Option<u64>,
}

struct Inner {
    dir: PathBuf,
    /// In order; the last one is written to.
    segments: Vec<Segment>,
    entries: BTreeMap<u64, Loc>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId>,
    /// `committed` changed since it was last written.
    committed_unwritten: bool,
    last_purged: Option<LogId>,
    /// A segment this long is closed.
    segment_bytes: u64,
}

/// Log storage over the WAL. Cheap to clone: the reader shares it.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn io_err(verb: ErrorVerb, e: impl ToString) -> StorageError {
    StorageError::from_io_error(
        ErrorSubject::Logs,
        verb,
        std::io::Error::other(e.to_string()),
    )
}

fn read_err(e: impl ToString) -> StorageError {
    io_err(ErrorVerb::Read, e)
}

fn write_err(e: impl ToString) -> StorageError {
    io_err(ErrorVerb::Write, e)
}

/// Run blocking file work off the async executor.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f).await.map_err(write_err)?
}

/// Append the framed `record` to `buf`.
fn frame(buf: &mut Vec<u8>, record: &RecordRef<'_>) -> Result<(), serde_json::Error> {
    let start = buf.len();
    buf.extend_from_slice(&[0; FRAME]);
    serde_json::to_writer(&mut *buf, record)?;
    let payload = &buf[start + FRAME..];
    let len = payload.len() as u32;
    let crc = crc32fast::hash(payload);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + FRAME].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Check a framed record's payload against its header.
fn unframe(header: [u8; FRAME], payload: &[u8]) -> Result<Record, String> {
    let crc = u32::from_le_bytes(header[4..].try_into().unwrap_or_default());
    if crc32fast::hash(payload) != crc {
        return Err("checksum mismatch".into());
    }
    serde_json::from_slice(payload).map_err(|e| e.to_string())
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.wal"))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reserve the first `len` bytes of `file` (reading as zeros), so appends
/// inside them do not change its size. Best effort: on a file system
/// without `fallocate` the segment grows as it is written, as before.
fn preallocate(file: &File, len: u64) {
    use std::os::fd::AsRawFd;
    let Ok(len) = libc::off_t::try_from(len) else {
        return;
    };
    // SAFETY: `file` is an open descriptor; mode 0 allocates and extends,
    // never shrinks or changes the data already written.
    let _ = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
}

impl Inner {
    fn active(&mut self) -> &mut Segment {
        self.segments.last_mut().expect("the log has a segment")
    }

    /// Write `buf` (framed records) at the end of the active segment, with
    /// `fdatasync` when `sync`. Returns the offset it was written at.
    fn write(&mut self, buf: &[u8], sync: bool) -> std::io::Result<u64> {
        let seg = self.active();
        let at = seg.end;
        seg.file.write_all_at(buf, at)?;
        if sync {
            seg.file.sync_data()?;
        }
        seg.end += buf.len() as u64;
        Ok(at)
    }

    /// The records a new segment starts with: what the closed ones said.
    fn head(&self, buf: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        if let Some(v) = &self.vote {
            frame(buf, &RecordRef::Vote(v))?;
        }
        if let Some(p) = &self.last_purged {
            frame(buf, &RecordRef::Purged(p))?;
        }
        frame(buf, &RecordRef::Committed(&self.committed))
    }

    /// Start segment `seq` with the head records, durably.
    fn start_segment(&mut self, seq: u64) -> Result<(), StorageError> {
        let path = segment_path(&self.dir, seq);
        let mut head = Vec::new();
        self.head(&mut head).map_err(write_err)?;
        let mut file = File::options()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| write_err(format!("{}: {e}", path.display())))?;
        file.write_all(&head)
            .map(|_| preallocate(&file, self.segment_bytes))
            .and_then(|_| file.sync_all())
            .and_then(|_| sync_dir(&self.dir))
            .map_err(|e| write_err(format!("{}: {e}", path.display())))?;
        self.committed_unwritten = false;
        self.segments.push(Segment {
            seq,
            path,
            file: Arc::new(file),
            end: head.len() as u64,
            last_index: None,
        });
        Ok(())
    }

    /// Close the active segment if it is full, and delete closed segments
    /// whose entries are all purged.
    fn maintain(&mut self) -> Result<(), StorageError> {
        if self.active().end >= self.segment_bytes {
            let closing = self.active();
            // give back what it did not use; a crash before this reaches
            // the disk leaves zeros, which a reader skips
            let _ = closing.file.set_len(closing.end);
            let next = closing.seq + 1;
            self.start_segment(next)?;
        }
        let purged = self.last_purged.map(|p| p.index);
        while self.segments.len() > 1 {
            let first = &self.segments[0];
            let gone = match (first.last_index, purged) {
                (None, _) => true,
                (Some(last), Some(p)) => last <= p,
                (Some(_), None) => false,
            };
            if !gone {
                break;
            }
            let path = first.path.clone();
            std::fs::remove_file(&path)
                .map_err(|e| write_err(format!("{}: {e}", path.display())))?;
            self.segments.remove(0);
        }
        Ok(())
    }

    /// Replay `record`, read from `loc` when it is an entry.
    fn replay(&mut self, record: Record, loc: Loc) {
        match record {
            Record::Entry(e) => {
                let index = e.log_id.index;
                // an entry replaces any it conflicts with, and what follows
                self.entries.split_off(&index);
                self.entries.insert(
                    index,
                    Loc {
                        log_id: e.log_id,
                        ..loc
                    },
                );
                if let Some(seg) = self.segments.iter_mut().find(|s| s.seq == loc.segment) {
                    seg.last_index = Some(seg.last_index.map_or(index, |l| l.max(index)));
                }
            }
            Record::Vote(v) => self.vote = Some(v),
            Record::Committed(c) => self.committed = c,
            Record::Purged(p) => {
                self.entries = self.entries.split_off(&(p.index + 1));
                self.last_purged = Some(p);
            }
            Record::Truncated(index) => {
                self.entries.split_off(&index);
            }
        }
    }
}

/// A record read from a segment, with its offset and payload length.
type Framed = (Record, u64, u32);

/// The records of a segment, where they end, and where its data ends (its
/// length without the trailing zeros of reserved space).
type Segmented = (Vec<Framed>, u64, u64);

/// Read the records of the segment file at `path`; `last`: it is the one
/// written to, where a record cut short at the end of its data (what a
/// crash in the middle of an append leaves) ends the log instead of being
/// an error. Damage anywhere else is an error. Returns each record with
/// its offset and length, where the valid records end, and where the data
/// ends (beyond the valid records only after such a crash).
fn read_segment(path: &Path, last: bool) -> Result<Segmented, WalError> {
    let io = |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io)?;
    // reserved space, or a length the file got to before its data did
    let data_end = bytes.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
    bytes.truncate(data_end);
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let bad = |reason: String| WalError::Corrupt {
            path: path.to_path_buf(),
            offset: at as u64,
            reason,
        };
        let rest = &bytes[at..];
        // Err((reason, torn)): `torn` when the record is the file's last
        // and incomplete, as a crash in the middle of its write leaves it
        let parsed = if rest.len() < FRAME {
            Err(("a record header cut short".to_string(), true))
        } else {
            let header: [u8; FRAME] = rest[..FRAME].try_into().unwrap_or_default();
            let len = u32::from_le_bytes(header[..4].try_into().unwrap_or_default()) as usize;
            if len == 0 || len > MAX_RECORD {
                // not trailing zeros (those are gone): damage
                Err((format!("a record length of {len}"), false))
            } else if rest.len() < FRAME + len {
                Err((
                    format!(
                        "a record of {len} bytes with {} left in the file",
                        rest.len() - FRAME
                    ),
                    true,
                ))
            } else {
                let last_record = rest.len() == FRAME + len;
                unframe(header, &rest[FRAME..FRAME + len])
                    .map(|r| (r, len))
                    .map_err(|reason| (reason, last_record))
            }
        };
        match parsed {
            Ok((record, len)) => {
                out.push((record, at as u64, len as u32));
                at += FRAME + len;
            }
            // an append cut short by a crash: it was never acknowledged
            Err((_, true)) if last => break,
            Err((reason, _)) => return Err(bad(reason)),
        }
    }
    Ok((out, at as u64, data_end as u64))
}

impl LogStore {
    /// Open (or create) the log in the directory `dir`.
    pub fn open(dir: &Path) -> Result<Self, WalError> {
        Self::open_with(dir, SEGMENT_BYTES)
    }

    fn open_with(dir: &Path, segment_bytes: u64) -> Result<Self, WalError> {
        let io = |path: &Path, source| WalError::Io {
            path: path.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let mut seqs = Vec::new();
        for item in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
            let name = item.map_err(|e| io(dir, e))?.file_name();
            let name = name.to_string_lossy();
            if let Some(seq) = name
                .strip_suffix(".wal")
                .and_then(|s| u64::from_str_radix(s, 16).ok())
            {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        let mut inner = Inner {
            dir: dir.to_path_buf(),
            segments: Vec::new(),
            entries: BTreeMap::new(),
            vote: None,
            committed: None,
            committed_unwritten: false,
            last_purged: None,
            segment_bytes,
        };
        for (i, &seq) in seqs.iter().enumerate() {
            let path = segment_path(dir, seq);
            let last = i + 1 == seqs.len();
            let (records, end, data_end) = read_segment(&path, last)?;
            let file = File::options()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| io(&path, e))?;
            if last {
                if data_end > end {
                    // drop the torn tail, so the next append follows the last
                    // good record and nothing stale is read after it
                    tracing::warn!(path = %path.display(), offset = end, "dropping a Raft log record cut short by a crash");
                    file.set_len(end).map_err(|e| io(&path, e))?;
                }
                // a segment of an older version, or one just cut, is
                // reserved again
                preallocate(&file, segment_bytes);
                file.sync_all().map_err(|e| io(&path, e))?;
            }
            inner.segments.push(Segment {
                seq,
                path,
                file: Arc::new(file),
                end,
                last_index: None,
            });
            for (record, offset, len) in records {
                let loc = Loc {
                    segment: seq,
                    offset,
                    len,
                    log_id: LogId::default(),
                };
                inner.replay(record, loc);
            }
        }
        if inner.segments.is_empty() {
            inner
                .start_segment(0)
                .map_err(|e| io(dir, std::io::Error::other(e.to_string())))?;
        }
        Ok(Self {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    /// Append `records` to the log, durably.
    async fn put(&self, records: Vec<u8>) -> Result<(), StorageError> {
        let inner = self.inner.clone();
        blocking(move || {
            let mut inner = lock(&inner);
            inner.write(&records, true).map_err(write_err)?;
            inner.maintain()
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
        {
            let mut inner = lock(&self.inner);
            inner.vote = Some(*vote);
            inner.last_purged = Some(last);
        }
        let mut buf = Vec::new();
        frame(&mut buf, &RecordRef::Vote(vote)).map_err(write_err)?;
        frame(&mut buf, &RecordRef::Purged(&last)).map_err(write_err)?;
        self.put(buf).await
    }

    /// Append `entries` with one write and one `fdatasync` (the committed
    /// hint, when it changed, goes in front of them).
    async fn write_entries(
        &self,
        entries: impl IntoIterator<Item = Entry>,
    ) -> Result<(), StorageError> {
        let mut buf = Vec::new();
        let mut framed = Vec::new();
        for e in entries {
            let at = buf.len();
            frame(&mut buf, &RecordRef::Entry(&e)).map_err(write_err)?;
            framed.push((e.log_id, at as u64, (buf.len() - at - FRAME) as u32));
        }
        let inner = self.inner.clone();
        let started = std::time::Instant::now();
        let count = framed.len();
        blocking(move || {
            let mut inner = lock(&inner);
            let mut head = Vec::new();
            if inner.committed_unwritten {
                frame(&mut head, &RecordRef::Committed(&inner.committed)).map_err(write_err)?;
            }
            let skip = head.len() as u64;
            head.extend_from_slice(&buf);
            let at = inner.write(&head, true).map_err(write_err)? + skip;
            inner.committed_unwritten = false;
            let segment = inner.active().seq;
            for (log_id, offset, len) in framed {
                let loc = Loc {
                    segment,
                    offset: at + offset,
                    len,
                    log_id,
                };
                inner.entries.split_off(&log_id.index);
                inner.entries.insert(log_id.index, loc);
                let seg = inner.active();
                seg.last_index = Some(seg.last_index.map_or(log_id.index, |l| l.max(log_id.index)));
            }
            inner.maintain()
        })
        .await?;
        let took = started.elapsed();
        if took > SLOW_LOG_WRITE {
            // as etcd's "slow fdatasync": a disk this slow delays every
            // commit, and a follower this slow misses the leader's
            // replication deadline
            tracing::warn!(?took, entries = count, "slow Raft log write (fsync)");
        }
        Ok(())
    }

    /// The first and last index the log holds (`None` when it holds no
    /// entry), for inspection.
    pub fn bounds(&self) -> Option<(u64, u64)> {
        let inner = lock(&self.inner);
        let first = inner.entries.keys().next()?;
        let last = inner.entries.keys().next_back()?;
        Some((*first, *last))
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
            Bound::Included(x) => x.saturating_add(1),
            Bound::Excluded(x) => *x,
            Bound::Unbounded => u64::MAX,
        };
        if end <= start {
            return Ok(Vec::new());
        }
        let wanted: Vec<(Loc, Arc<File>, PathBuf)> = {
            let inner = lock(&self.inner);
            inner
                .entries
                .range(start..end)
                .filter_map(|(_, loc)| {
                    let seg = inner.segments.iter().find(|s| s.seq == loc.segment)?;
                    Some((*loc, seg.file.clone(), seg.path.clone()))
                })
                .collect()
        };
        blocking(move || {
            let mut out = Vec::with_capacity(wanted.len());
            let mut buf = Vec::new();
            for (loc, file, path) in wanted {
                buf.resize(FRAME + loc.len as usize, 0);
                file.read_exact_at(&mut buf, loc.offset)
                    .map_err(|e| read_err(format!("{}: {e}", path.display())))?;
                let header: [u8; FRAME] = buf[..FRAME].try_into().unwrap_or_default();
                match unframe(header, &buf[FRAME..]) {
                    Ok(Record::Entry(e)) if e.log_id == loc.log_id => out.push(e),
                    Ok(other) => {
                        return Err(read_err(format!(
                            "{} offset {}: expected entry {}, found {other:?}",
                            path.display(),
                            loc.offset,
                            loc.log_id
                        )))
                    }
                    Err(reason) => {
                        return Err(read_err(format!(
                            "{} offset {}: {reason}",
                            path.display(),
                            loc.offset
                        )))
                    }
                }
            }
            Ok(out)
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let inner = lock(&self.inner);
        let last_log_id = inner
            .entries
            .values()
            .next_back()
            .map(|l| l.log_id)
            .or(inner.last_purged);
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let mut buf = Vec::new();
        frame(&mut buf, &RecordRef::Vote(vote)).map_err(write_err)?;
        lock(&self.inner).vote = Some(*vote);
        self.put(buf).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        Ok(lock(&self.inner).vote)
    }

    /// The committed index is a hint that lets a restart re-apply without an
    /// election: it is written in front of the next append's entries (no
    /// write of its own), and losing it only means waiting for the leader
    /// to commit again.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let mut inner = lock(&self.inner);
        inner.committed = committed;
        inner.committed_unwritten = true;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(lock(&self.inner).committed)
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
        match self.write_entries(entries).await {
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
        let mut buf = Vec::new();
        frame(&mut buf, &RecordRef::Truncated(log_id.index)).map_err(write_err)?;
        lock(&self.inner).entries.split_off(&log_id.index);
        self.put(buf).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut buf = Vec::new();
        frame(&mut buf, &RecordRef::Purged(&log_id)).map_err(write_err)?;
        {
            let mut inner = lock(&self.inner);
            inner.entries = inner.entries.split_off(&(log_id.index + 1));
            inner.last_purged = Some(log_id);
        }
        self.put(buf).await
    }
}

/// Move a log kept by an older wasmkube (one redb file: tables `logs` and
/// `meta`) into a WAL directory `dir`, then delete the file. The new log is
/// written beside it and renamed into place, so a crash at any point
/// leaves one complete log or the other.
pub fn migrate_redb(old: &Path, dir: &Path) -> Result<(), WalError> {
    use redb::{ReadableDatabase, ReadableTable, TableDefinition};
    const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
    const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
    let fail = |path: &Path, e: &dyn std::fmt::Display| WalError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    };
    if dir.exists() {
        // renamed into place before the old file was deleted
        return std::fs::remove_file(old).map_err(|e| fail(old, &e));
    }
    let db = redb::Database::open(old).map_err(|e| fail(old, &e))?;
    let tx = db.begin_read().map_err(|e| fail(old, &e))?;
    let meta = tx.open_table(META).map_err(|e| fail(old, &e))?;
    let get = |key: &str| -> Result<Option<Vec<u8>>, WalError> {
        Ok(meta
            .get(key)
            .map_err(|e| fail(old, &e))?
            .map(|v| v.value().to_vec()))
    };
    let parse = |bytes: Vec<u8>| -> Result<serde_json::Value, WalError> {
        serde_json::from_slice(&bytes).map_err(|e| fail(old, &e))
    };
    let mut buf = Vec::new();
    let framed = |buf: &mut Vec<u8>, r: RecordRef<'_>| frame(buf, &r).map_err(|e| fail(old, &e));
    if let Some(v) = get("vote")? {
        let vote: Vote<NodeId> = serde_json::from_value(parse(v)?).map_err(|e| fail(old, &e))?;
        framed(&mut buf, RecordRef::Vote(&vote))?;
    }
    if let Some(p) = get("last_purged")? {
        let purged: Option<LogId> = serde_json::from_value(parse(p)?).map_err(|e| fail(old, &e))?;
        if let Some(p) = &purged {
            framed(&mut buf, RecordRef::Purged(p))?;
        }
    }
    let committed: Option<LogId> = match get("committed")? {
        Some(c) => serde_json::from_value(parse(c)?).map_err(|e| fail(old, &e))?,
        None => None,
    };
    framed(&mut buf, RecordRef::Committed(&committed))?;
    let logs = tx.open_table(LOGS).map_err(|e| fail(old, &e))?;
    let mut count = 0usize;
    for item in logs.iter().map_err(|e| fail(old, &e))? {
        let (_, v) = item.map_err(|e| fail(old, &e))?;
        let entry: Entry = serde_json::from_slice(v.value()).map_err(|e| fail(old, &e))?;
        framed(&mut buf, RecordRef::Entry(&entry))?;
        count += 1;
    }
    drop((logs, meta, tx, db));
    let tmp = dir.with_extension("migrating");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| fail(&tmp, &e))?;
    let seg = segment_path(&tmp, 0);
    let mut f = File::create(&seg).map_err(|e| fail(&seg, &e))?;
    f.write_all(&buf)
        .and_then(|_| f.sync_all())
        .and_then(|_| sync_dir(&tmp))
        .map_err(|e| fail(&seg, &e))?;
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::rename(&tmp, dir)
        .and_then(|_| sync_dir(parent))
        .map_err(|e| fail(dir, &e))?;
    std::fs::remove_file(old)
        .and_then(|_| sync_dir(parent))
        .map_err(|e| fail(old, &e))?;
    tracing::info!(entries = count, from = %old.display(), to = %dir.display(), "moved the Raft log into a write-ahead log");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::testing::{blank_ent, log_id};

    fn entries(from: u64, to: u64, term: u64) -> Vec<Entry> {
        (from..=to)
            .map(|i| blank_ent::<TypeConfig>(term, 1, i))
            .collect()
    }

    async fn indexes(log: &mut LogStore) -> Vec<(u64, u64)> {
        log.try_get_log_entries(..)
            .await
            .unwrap()
            .iter()
            .map(|e| (e.log_id.index, e.log_id.leader_id.term))
            .collect()
    }

    /// A file's length without its trailing zeros (the reserved space).
    fn data_len(path: &Path) -> usize {
        let bytes = std::fs::read(path).unwrap();
        bytes.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1)
    }

    fn segments(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_reopened_log_has_what_was_written_truncated_and_purged() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let mut log = LogStore::open(&dir).unwrap();
        log.write_entries(entries(1, 10, 1)).await.unwrap();
        // a new leader overwrites 8.. after a truncation
        log.truncate(log_id(1, 1, 8)).await.unwrap();
        log.write_entries(entries(8, 12, 2)).await.unwrap();
        log.purge(log_id(1, 1, 3)).await.unwrap();
        let vote = Vote::new_committed(2, 1);
        log.save_vote(&vote).await.unwrap();
        log.save_committed(Some(log_id(2, 1, 11))).await.unwrap();
        // the committed hint rides on the next append
        log.write_entries(entries(13, 13, 2)).await.unwrap();
        let want: Vec<(u64, u64)> = (4..=7)
            .map(|i| (i, 1))
            .chain((8..=13).map(|i| (i, 2)))
            .collect();
        assert_eq!(indexes(&mut log).await, want);
        drop(log);

        let mut log = LogStore::open(&dir).unwrap();
        assert_eq!(indexes(&mut log).await, want);
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 3)));
        assert_eq!(state.last_log_id, Some(log_id(2, 1, 13)));
        assert_eq!(log.read_vote().await.unwrap(), Some(vote));
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(2, 1, 11)));
        assert_eq!(log.bounds(), Some((4, 13)));
        let some = log.try_get_log_entries(5..7).await.unwrap();
        assert_eq!(
            some.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            vec![5, 6]
        );
    }

    #[tokio::test]
    async fn an_append_cut_short_by_a_crash_is_dropped_and_the_log_goes_on() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let log = LogStore::open(&dir).unwrap();
        log.write_entries(entries(1, 5, 1)).await.unwrap();
        drop(log);
        // half of a sixth entry's record, as a crash mid-write leaves it
        let path = dir.join(&segments(&dir)[0]);
        let mut whole = Vec::new();
        frame(
            &mut whole,
            &RecordRef::Entry(&blank_ent::<TypeConfig>(1, 1, 6)),
        )
        .unwrap();
        // written where the next append goes: inside the reserved space
        let end = data_len(&path);
        let f = File::options().write(true).open(&path).unwrap();
        f.write_all_at(&whole[..whole.len() / 2], end as u64)
            .unwrap();
        drop(f);
        let before = data_len(&path);
        assert!(before > end);

        let mut log = LogStore::open(&dir).unwrap();
        assert_eq!(
            indexes(&mut log).await,
            (1..=5).map(|i| (i, 1)).collect::<Vec<_>>()
        );
        assert_eq!(data_len(&path), end, "torn tail cut off");
        assert!(
            std::fs::metadata(&path).unwrap().len() >= SEGMENT_BYTES,
            "reserved again"
        );
        log.write_entries(entries(6, 7, 1)).await.unwrap();
        drop(log);
        let mut log = LogStore::open(&dir).unwrap();
        assert_eq!(
            indexes(&mut log).await,
            (1..=7).map(|i| (i, 1)).collect::<Vec<_>>()
        );
        drop(log);
        // damage with good records after it is not a torn append: refused,
        // not cut off (that would drop acknowledged entries)
        let mut bytes = std::fs::read(&path).unwrap();
        let at = data_len(&path) - whole.len() * 2 - whole.len() / 2;
        bytes[at] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let Err(err) = LogStore::open(&dir) else {
            panic!("a damaged log opened")
        };
        assert!(err.to_string().contains("bad record at offset"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "nothing cut off");
    }

    #[tokio::test]
    async fn segments_are_reserved_ahead_and_their_zeros_are_not_records() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let log = LogStore::open_with(&dir, 4096).unwrap();
        log.write_entries(entries(1, 3, 1)).await.unwrap();
        let first = dir.join(&segments(&dir)[0]);
        // the tempdir's file system reserves (ext4, tmpfs, xfs, btrfs all do)
        assert_eq!(std::fs::metadata(&first).unwrap().len(), 4096);
        let used = data_len(&first);
        assert!(used < 4096, "{used}");
        // an append goes right after the last record, not after the zeros
        log.write_entries(entries(4, 4, 1)).await.unwrap();
        assert!(data_len(&first) > used);
        assert_eq!(std::fs::metadata(&first).unwrap().len(), 4096);
        for i in 5..=200 {
            log.write_entries(entries(i, i, 1)).await.unwrap();
        }
        drop(log);
        let names = segments(&dir);
        assert!(names.len() > 2, "{names:?}");
        // a closed segment gives its reserve back
        let closed = dir.join(&names[0]);
        assert_eq!(
            std::fs::metadata(&closed).unwrap().len() as usize,
            data_len(&closed)
        );
        // ... and zeros a crash left at its end (before it was cut) are
        // no records either
        let f = File::options().write(true).open(&closed).unwrap();
        f.set_len(data_len(&closed) as u64 + 4096).unwrap();
        drop(f);
        let mut log = LogStore::open_with(&dir, 4096).unwrap();
        assert_eq!(
            indexes(&mut log).await,
            (1..=200).map(|i| (i, 1)).collect::<Vec<_>>()
        );
        log.write_entries(entries(201, 201, 1)).await.unwrap();
        drop(log);
        let mut log = LogStore::open_with(&dir, 4096).unwrap();
        assert_eq!(
            indexes(&mut log).await,
            (1..=201).map(|i| (i, 1)).collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn segments_rotate_purged_ones_are_deleted_and_damage_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let mut log = LogStore::open_with(&dir, 1024).unwrap();
        let vote = Vote::new_committed(1, 1);
        log.save_vote(&vote).await.unwrap();
        for i in 1..=40 {
            log.write_entries(entries(i, i, 1)).await.unwrap();
        }
        let before = segments(&dir);
        assert!(before.len() > 3, "{before:?}");
        log.purge(log_id(1, 1, 30)).await.unwrap();
        let after = segments(&dir);
        assert!(
            after.len() < before.len() && !after.is_empty(),
            "{before:?} -> {after:?}"
        );
        assert_eq!(after.last(), before.last());
        drop(log);
        // the vote and the purge marker outlive the segments they were written in
        let mut log = LogStore::open_with(&dir, 1024).unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(vote));
        assert_eq!(
            log.get_log_state().await.unwrap().last_purged_log_id,
            Some(log_id(1, 1, 30))
        );
        assert_eq!(
            indexes(&mut log).await,
            (31..=40).map(|i| (i, 1)).collect::<Vec<_>>()
        );
        drop(log);

        // a damaged record in a closed segment is an error naming it
        let first = dir.join(&after[0]);
        let mut bytes = std::fs::read(&first).unwrap();
        let at = bytes.len() - 3;
        bytes[at] ^= 0xff;
        std::fs::write(&first, &bytes).unwrap();
        let Err(err) = LogStore::open_with(&dir, 1024) else {
            panic!("a damaged segment opened")
        };
        let msg = err.to_string();
        assert!(
            msg.contains(&after[0]) && msg.contains("checksum mismatch"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn a_redb_log_of_an_older_version_is_moved_into_the_wal() {
        use redb::TableDefinition;
        const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
        const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
        let tmp = tempfile::tempdir().unwrap();
        let old = tmp.path().join("raft-log.redb");
        let vote = Vote::new_committed(3, 1);
        {
            let db = redb::Database::create(&old).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut logs = tx.open_table(LOGS).unwrap();
                for e in entries(6, 9, 3) {
                    logs.insert(e.log_id.index, serde_json::to_vec(&e).unwrap().as_slice())
                        .unwrap();
                }
                let mut meta = tx.open_table(META).unwrap();
                let put = |m: &mut redb::Table<&str, &[u8]>, k: &str, v: serde_json::Value| {
                    m.insert(k, serde_json::to_vec(&v).unwrap().as_slice())
                        .unwrap();
                };
                put(&mut meta, "vote", serde_json::to_value(vote).unwrap());
                put(
                    &mut meta,
                    "last_purged",
                    serde_json::to_value(Some(log_id(3, 1, 5))).unwrap(),
                );
                put(
                    &mut meta,
                    "committed",
                    serde_json::to_value(Some(log_id(3, 1, 8))).unwrap(),
                );
            }
            tx.commit().unwrap();
        }
        let dir = tmp.path().join("wal");
        migrate_redb(&old, &dir).unwrap();
        assert!(!old.exists());
        let mut log = LogStore::open(&dir).unwrap();
        assert_eq!(
            indexes(&mut log).await,
            (6..=9).map(|i| (i, 3)).collect::<Vec<_>>()
        );
        assert_eq!(log.read_vote().await.unwrap(), Some(vote));
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(3, 1, 8)));
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(3, 1, 5)));
    }
}
