//! The Raft log in its own RocksDB instance (apart from the MVCC data, so that data compaction
//! never stalls appends).
//!
//! `append` writes entries to RocksDB unsynced (readable at once) and hands the flush callback to
//! a dedicated fsync thread. That thread takes every callback queued while it was busy and covers
//! them with one WAL fsync: group commit across concurrent appends. Entries carry a CRC32 so a
//! damaged record is refused, never served.

use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, StorageIOError};
use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};

use crate::metrics::Metrics;
use crate::types::*;

const CF_LOGS: &str = "logs";
const CF_META: &str = "meta";
const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"last_purged";

struct Inner {
    db: DB,
    committed: std::sync::atomic::AtomicU64,
    flusher: std::sync::Mutex<mpsc::Sender<LogFlushed<TypeConfig>>>,
}

#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

fn io_err<E: std::fmt::Display>(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: E) -> StorageError {
    StorageIOError::new(subject, verb, openraft::AnyError::error(e.to_string())).into()
}

fn read_err<E: std::fmt::Display>(e: E) -> StorageError {
    io_err(ErrorSubject::Logs, ErrorVerb::Read, e)
}

fn write_err<E: std::fmt::Display>(e: E) -> StorageError {
    io_err(ErrorSubject::Logs, ErrorVerb::Write, e)
}

fn encode_entry(e: &Entry) -> Vec<u8> {
    let body = bincode::serialize(e).expect("in-memory serialization cannot fail");
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

fn decode_entry(index: u64, v: &[u8]) -> Result<Entry, StorageError> {
    if v.len() < 4 {
        return Err(read_err(format!("raft log entry {index} is truncated")));
    }
    let crc = u32::from_le_bytes([v[0], v[1], v[2], v[3]]);
    if crc32fast::hash(&v[4..]) != crc {
        return Err(read_err(format!("raft log entry {index} fails its checksum: the log is corrupted")));
    }
    let e: Entry = bincode::deserialize(&v[4..]).map_err(|e| read_err(format!("raft log entry {index}: {e}")))?;
    if e.log_id.index != index {
        return Err(read_err(format!("raft log entry stored at {index} claims index {}", e.log_id.index)));
    }
    Ok(e)
}

impl LogStore {
    pub fn open(dir: &Path, metrics: Arc<Metrics>) -> Result<LogStore, rocksdb::Error> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_paranoid_checks(true);
        opts.set_keep_log_file_num(3);
        // Log entries live until the next snapshot purges them: compressing them on flush is
        // CPU spent on data that is about to be deleted.
        let cfs = [CF_LOGS, CF_META].iter().map(|n| {
            let mut o = Options::default();
            o.set_compression_type(rocksdb::DBCompressionType::None);
            ColumnFamilyDescriptor::new(*n, o)
        });
        let db = DB::open_cf_descriptors(&opts, dir, cfs)?;
        let (tx, rx) = mpsc::channel::<LogFlushed<TypeConfig>>();
        let store = LogStore { inner: Arc::new(Inner { db, committed: 0.into(), flusher: std::sync::Mutex::new(tx) }) };
        let weak = Arc::downgrade(&store.inner);
        std::thread::Builder::new()
            .name("raft-log-fsync".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut waiting = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        waiting.push(more);
                    }
                    let Some(inner) = weak.upgrade() else { break };
                    let t = Instant::now();
                    let res = inner.db.flush_wal(true);
                    metrics.fsync_seconds.observe(t.elapsed().as_secs_f64());
                    drop(inner);
                    for cb in waiting {
                        let r = match &res {
                            Ok(()) => Ok(()),
                            Err(e) => Err(io::Error::other(e.to_string())),
                        };
                        cb.log_io_completed(r);
                    }
                }
            })
            .expect("spawn fsync thread");
        Ok(store)
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.inner.db.cf_handle(name).expect("column family created at open")
    }

    fn get_meta<T: for<'de> serde::Deserialize<'de>>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        match self.inner.db.get_cf(self.cf(CF_META), key).map_err(read_err)? {
            None => Ok(None),
            Some(v) => bincode::deserialize(&v).map(Some).map_err(|e| read_err(format!("raft log metadata {:?}: {e}", String::from_utf8_lossy(key)))),
        }
    }

    fn put_meta<T: serde::Serialize>(&self, key: &[u8], v: &T, sync: bool) -> Result<(), StorageError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        let bytes = bincode::serialize(v).map_err(write_err)?;
        self.inner.db.put_cf_opt(self.cf(CF_META), key, bytes, &wo).map_err(write_err)
    }

    /// Moves memtables to SST files (on clean shutdown, so a restart replays little WAL).
    pub fn flush(&self) -> Result<(), rocksdb::Error> {
        self.inner.db.flush_wal(true)?;
        for cf in [CF_LOGS, CF_META] {
            self.inner.db.flush_cf(self.cf(cf))?;
        }
        Ok(())
    }

    /// Highest committed log index this replica has been told of.
    pub fn committed_index(&self) -> u64 {
        self.inner.committed.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn size_bytes(&self) -> u64 {
        let mut total = 0;
        for cf in [CF_LOGS, CF_META] {
            for p in ["rocksdb.total-sst-files-size", "rocksdb.cur-size-all-mem-tables"] {
                total += self.inner.db.property_int_value_cf(self.cf(cf), p).ok().flatten().unwrap_or(0);
            }
        }
        total
    }

    /// Reads every entry once to check checksums and continuity; used at startup so that a damaged
    /// log makes the replica refuse to start instead of serving wrong data later.
    pub fn verify(&self) -> Result<(u64, Option<u64>), StorageError> {
        let mut count = 0u64;
        let mut prev: Option<u64> = None;
        for item in self.inner.db.iterator_cf(self.cf(CF_LOGS), IteratorMode::Start) {
            let (k, v) = item.map_err(read_err)?;
            let idx = u64::from_be_bytes(k[..].try_into().map_err(|_| read_err("raft log key is not 8 bytes"))?);
            decode_entry(idx, &v)?;
            if let Some(p) = prev {
                if idx != p + 1 {
                    return Err(read_err(format!("raft log has a gap between {p} and {idx}")));
                }
            }
            prev = Some(idx);
            count += 1;
        }
        Ok((count, prev))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(&mut self, range: RB) -> Result<Vec<Entry>, StorageError> {
        use std::ops::Bound;
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => *x + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(x) => Some(*x + 1),
            Bound::Excluded(x) => Some(*x),
            Bound::Unbounded => None,
        };
        let mut out = Vec::new();
        let from = start.to_be_bytes();
        for item in self.inner.db.iterator_cf(self.cf(CF_LOGS), IteratorMode::From(&from, Direction::Forward)) {
            let (k, v) = item.map_err(read_err)?;
            let idx = u64::from_be_bytes(k[..].try_into().map_err(|_| read_err("raft log key is not 8 bytes"))?);
            if end.is_some_and(|e| idx >= e) {
                break;
            }
            out.push(decode_entry(idx, &v)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.get_meta::<Option<LogId>>(KEY_PURGED)?.flatten();
        let mut it = self.inner.db.iterator_cf(self.cf(CF_LOGS), IteratorMode::End);
        let last = match it.next() {
            None => last_purged,
            Some(item) => {
                let (k, v) = item.map_err(read_err)?;
                let idx = u64::from_be_bytes(k[..].try_into().map_err(|_| read_err("raft log key is not 8 bytes"))?);
                Some(decode_entry(idx, &v)?.log_id)
            }
        };
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.put_meta(KEY_VOTE, vote, true)
            .map_err(|_| io_err(ErrorSubject::Vote, ErrorVerb::Write, "cannot persist vote"))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.inner.committed.store(committed.map(|l| l.index).unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
        self.put_meta(KEY_COMMITTED, &committed, false)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        let cf = self.cf(CF_LOGS);
        for e in entries {
            batch.put_cf(cf, e.log_id.index.to_be_bytes(), encode_entry(&e));
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(false);
        self.inner.db.write_opt(batch, &wo).map_err(write_err)?;
        let tx = self.inner.flusher.lock().map_err(|_| write_err("fsync thread lock poisoned"))?;
        tx.send(callback).map_err(|_| write_err("fsync thread stopped"))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.cf(CF_LOGS), log_id.index.to_be_bytes(), u64::MAX.to_be_bytes());
        batch.delete_cf(self.cf(CF_LOGS), u64::MAX.to_be_bytes());
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.inner.db.write_opt(batch, &wo).map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_META), KEY_PURGED, bincode::serialize(&Some(log_id)).map_err(write_err)?);
        batch.delete_range_cf(self.cf(CF_LOGS), 0u64.to_be_bytes(), (log_id.index + 1).to_be_bytes());
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.inner.db.write_opt(batch, &wo).map_err(write_err)
    }
}
