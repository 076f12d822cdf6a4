//! MVCC key-value store over RocksDB with etcd's semantics: one global revision per write
//! transaction, every version kept until compaction, leases with attached keys.
//!
//! It knows nothing about Raft: the state machine hands it commands in log order and persists the
//! applied log id through [`Mvcc::apply`]'s `extra_meta`. Reads may run concurrently with apply.
//!
//! Column families:
//! - `cur`: user key -> latest live [`KeyValue`] (fast ranges at the current revision)
//! - `ver`: memcomparable(key) ++ !main ++ !sub -> [`KeyValue`] (all versions, newest first;
//!   tombstones have version 0), for reads at past revisions and watch replay
//! - `rev`: main ++ sub -> user key (the event log, for watch catch-up and compaction)
//! - `lease`: id -> [`LeaseRecord`]; `lease_keys`: id ++ key -> ()
//! - `meta`: current revision, compact revision, and whatever the caller stores there

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, ReadOptions, Snapshot, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};

use crate::types::*;

pub const CF_CUR: &str = "cur";
pub const CF_VER: &str = "ver";
pub const CF_REV: &str = "rev";
pub const CF_LEASE: &str = "lease";
pub const CF_LEASE_KEYS: &str = "lease_keys";
pub const CF_META: &str = "meta";
pub const ALL_CFS: [&str; 6] = [CF_CUR, CF_VER, CF_REV, CF_LEASE, CF_LEASE_KEYS, CF_META];

const META_REVISION: &[u8] = b"revision";
const META_COMPACT: &[u8] = b"compact";
const META_PHYSICAL: &[u8] = b"compact_physical";

/// Shared block cache of the state machine's column families.
const BLOCK_CACHE_BYTES: usize = 128 << 20;

/// Lease TTLs below this are raised to it, as etcd does (it must outlive a leader election).
pub const MIN_LEASE_TTL: i64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum MvccError {
    #[error("rocksdb: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("corrupt record in {cf}: {detail}")]
    Corrupt { cf: &'static str, detail: String },
}

pub type MvccResult<T> = Result<T, MvccError>;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub id: i64,
    pub ttl: i64,
}

/// Events produced by one revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevisionEvents {
    pub revision: Revision,
    pub events: Vec<Event>,
}

pub struct Mvcc {
    db: Arc<DB>,
    revision: AtomicI64,
    compact_revision: AtomicI64,
    /// Held by every write and across `flush`: RocksDB 7.8 flushes one named column family per
    /// call even with atomic_flush, so writes must not slip in between the column families.
    write_lock: std::sync::Mutex<()>,
}

fn decode<T: for<'de> Deserialize<'de>>(cf: &'static str, bytes: &[u8]) -> MvccResult<T> {
    bincode::deserialize(bytes).map_err(|e| MvccError::Corrupt { cf, detail: e.to_string() })
}

/// A revision counter stored in `meta` (8 bytes, big-endian).
fn meta_i64(v: Option<Vec<u8>>) -> MvccResult<Option<i64>> {
    match v {
        None => Ok(None),
        Some(v) => match <[u8; 8]>::try_from(v.as_slice()) {
            Ok(b) => Ok(Some(i64::from_be_bytes(b))),
            Err(_) => Err(MvccError::Corrupt { cf: CF_META, detail: "bad integer".into() }),
        },
    }
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serialize(v).expect("in-memory serialization cannot fail")
}

/// Order-preserving, prefix-free encoding of a user key: 0x00 -> 0x00 0xFF, then 0x00 0x01.
pub fn encode_key(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 2 + 12);
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.push(0);
    out.push(1);
    out
}

fn ver_key(key: &[u8], main: Revision, sub: u32) -> Vec<u8> {
    let mut k = encode_key(key);
    k.extend_from_slice(&(!(main as u64)).to_be_bytes());
    k.extend_from_slice(&(!sub).to_be_bytes());
    k
}

fn rev_key(main: Revision, sub: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&(main as u64).to_be_bytes());
    k[8..].copy_from_slice(&sub.to_be_bytes());
    k
}

fn parse_rev_key(k: &[u8]) -> Option<(Revision, u32)> {
    if k.len() != 12 {
        return None;
    }
    let main = u64::from_be_bytes(k[..8].try_into().ok()?) as i64;
    let sub = u32::from_be_bytes(k[8..].try_into().ok()?);
    Some((main, sub))
}

fn lease_key(id: i64) -> [u8; 8] {
    (id as u64).to_be_bytes()
}

fn lease_key_entry(id: i64, key: &[u8]) -> Vec<u8> {
    let mut k = lease_key(id).to_vec();
    k.extend_from_slice(key);
    k
}

/// Whether `key` falls in etcd's [start, end) with its special forms.
pub fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        return key == start;
    }
    if end == [0] {
        return key >= start;
    }
    key >= start && key < end
}

/// The smallest key greater than every key with this prefix (etcd's GetPrefixRangeEnd).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Pending changes of one log entry: its writes are visible to later operations of the same
/// entry before they reach RocksDB in one batch.
pub struct ApplyBatch {
    batch: WriteBatch,
    cur: BTreeMap<Vec<u8>, Option<KeyValue>>,
    leases: HashMap<i64, Option<LeaseRecord>>,
    lease_keys: BTreeMap<(i64, Vec<u8>), bool>,
    /// Revision before this entry.
    base_revision: Revision,
    /// Revision after this entry's writes so far.
    revision: Revision,
    compact_revision: Revision,
    events: Vec<RevisionEvents>,
    meta: Vec<(Vec<u8>, Vec<u8>)>,
}

impl ApplyBatch {
    pub fn events(&self) -> &[RevisionEvents] {
        &self.events
    }
    pub fn revision(&self) -> Revision {
        self.revision
    }
    /// Stores a caller's metadata (the applied log id, the membership) in the same atomic write.
    pub fn put_meta(&mut self, key: &[u8], value: Vec<u8>) {
        self.meta.push((key.to_vec(), value));
    }
}

/// A write transaction in progress: one revision, sub-revisions numbered from 0.
struct WriteTxn {
    main: Revision,
    sub: u32,
    events: Vec<Event>,
}

impl Mvcc {
    /// Column families share one block cache; whole-key bloom filters spare the point reads of
    /// apply (the previous version of every written key) a probe of each SST file.
    pub fn cf_descriptors() -> Vec<ColumnFamilyDescriptor> {
        let cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES).ok();
        ALL_CFS
            .iter()
            .map(|n| {
                let mut t = rocksdb::BlockBasedOptions::default();
                t.set_bloom_filter(10.0, false);
                t.set_cache_index_and_filter_blocks(true);
                if let Some(c) = &cache {
                    t.set_block_cache(c);
                }
                let mut o = Options::default();
                o.set_block_based_table_factory(&t);
                // Recent data (L0/L1, rewritten by compaction soon) is stored uncompressed, the
                // long-lived levels below with LZ4 (as TiKV does): snappy on every flush was
                // ~4% of a busy replica's CPU.
                use rocksdb::DBCompressionType::{Lz4, None as Plain};
                o.set_compression_per_level(&[Plain, Plain, Lz4, Lz4, Lz4, Lz4, Lz4]);
                ColumnFamilyDescriptor::new(*n, o)
            })
            .collect()
    }

    pub fn db_options() -> Options {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_paranoid_checks(true);
        opts.set_max_background_jobs(2);
        opts.set_keep_log_file_num(3);
        // Applies skip the WAL (the Raft log is the durable record); flushing every column
        // family together keeps what reaches disk a consistent prefix of the applied entries.
        opts.set_atomic_flush(true);
        opts
    }

    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> MvccResult<Mvcc> {
        let db = DB::open_cf_descriptors(&Self::db_options(), dir, Self::cf_descriptors())?;
        Self::from_db(Arc::new(db))
    }

    pub fn from_db(db: Arc<DB>) -> MvccResult<Mvcc> {
        let m = Mvcc { db, revision: AtomicI64::new(0), compact_revision: AtomicI64::new(0), write_lock: std::sync::Mutex::new(()) };
        let rev = m.read_meta_i64(META_REVISION)?.unwrap_or(1);
        let compact = m.read_meta_i64(META_COMPACT)?.unwrap_or(0);
        m.revision.store(rev, Ordering::SeqCst);
        m.compact_revision.store(compact, Ordering::SeqCst);
        Ok(m)
    }

    pub fn db(&self) -> &Arc<DB> {
        &self.db
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(name).expect("column family created at open")
    }

    fn read_meta_i64(&self, key: &[u8]) -> MvccResult<Option<i64>> {
        meta_i64(self.db.get_cf(self.cf(CF_META), key)?)
    }

    pub fn get_meta(&self, key: &[u8]) -> MvccResult<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(CF_META), key)?)
    }

    /// The revision of the last committed write (etcd starts at 1).
    pub fn current_revision(&self) -> Revision {
        self.revision.load(Ordering::SeqCst)
    }

    pub fn compact_revision(&self) -> Revision {
        self.compact_revision.load(Ordering::SeqCst)
    }

    // ---------------------------------------------------------------- reads

    fn get_cur(&self, key: &[u8]) -> MvccResult<Option<KeyValue>> {
        match self.db.get_cf(self.cf(CF_CUR), key)? {
            None => Ok(None),
            Some(v) => Ok(Some(decode(CF_CUR, &v)?)),
        }
    }

    /// Latest live kvs in [start, end) at the current revision, at most `limit` (0 = all) plus
    /// whether more exist and the total count.
    fn scan_cur(&self, snap: &Snapshot<'_>, start: &[u8], end: &[u8], limit: usize, keys_only: bool, stop_after: Option<i64>) -> MvccResult<(Vec<KeyValue>, i64)> {
        let mut out = Vec::new();
        let mut count = 0i64;
        if end.is_empty() {
            if let Some(v) = snap.get_cf(self.cf(CF_CUR), start)? {
                let mut kv: KeyValue = decode(CF_CUR, &v)?;
                if keys_only {
                    kv.value.clear();
                }
                out.push(kv);
                count = 1;
            }
            return Ok((out, count));
        }
        let mut ro = ReadOptions::default();
        if end != [0] {
            ro.set_iterate_upper_bound(end.to_vec());
        }
        let iter = snap.iterator_cf_opt(self.cf(CF_CUR), ro, IteratorMode::From(start, Direction::Forward));
        for item in iter {
            let (_k, v) = item?;
            count += 1;
            if limit == 0 || out.len() < limit {
                let mut kv: KeyValue = decode(CF_CUR, &v)?;
                if keys_only {
                    kv.value.clear();
                }
                out.push(kv);
            }
            if stop_after.is_some_and(|s| count >= s) {
                break;
            }
        }
        Ok((out, count))
    }

    /// The version of `key` visible at `rev` (None if absent or deleted at that revision).
    fn get_at(&self, snap: &Snapshot<'_>, key: &[u8], rev: Revision) -> MvccResult<Option<KeyValue>> {
        let prefix = encode_key(key);
        let seek = ver_key(key, rev, u32::MAX);
        let mut it = snap.raw_iterator_cf(self.cf(CF_VER));
        it.seek(&seek);
        if it.valid() {
            if let (Some(k), Some(v)) = (it.key(), it.value()) {
                if k.starts_with(&prefix) && k.len() == prefix.len() + 12 {
                    let kv: KeyValue = decode(CF_VER, v)?;
                    return Ok(if kv.version == 0 { None } else { Some(kv) });
                }
            }
        }
        it.status()?;
        Ok(None)
    }

    /// Kvs in [start, end) as of `rev` (a past revision), from the version index.
    fn scan_at(&self, snap: &Snapshot<'_>, start: &[u8], end: &[u8], rev: Revision, limit: usize, keys_only: bool, stop_after: Option<i64>) -> MvccResult<(Vec<KeyValue>, i64)> {
        if end.is_empty() {
            let kv = self.get_at(snap, start, rev)?.map(|mut kv| {
                if keys_only {
                    kv.value.clear();
                }
                kv
            });
            let count = kv.is_some() as i64;
            return Ok((kv.into_iter().collect(), count));
        }
        let mut out = Vec::new();
        let mut count = 0i64;
        let upper = if end == [0] { None } else { Some(encode_key(end)) };
        let mut it = snap.raw_iterator_cf(self.cf(CF_VER));
        it.seek(encode_key(start));
        let target_suffix_main = (!(rev as u64)).to_be_bytes();
        while it.valid() {
            let Some(k) = it.key() else { break };
            if let Some(u) = &upper {
                if k >= u.as_slice() {
                    break;
                }
            }
            if k.len() < 14 {
                return Err(MvccError::Corrupt { cf: CF_VER, detail: "short key".into() });
            }
            let group = k[..k.len() - 12].to_vec();
            // Jump to the newest version at or below `rev` of this key.
            let mut seek = group.clone();
            seek.extend_from_slice(&target_suffix_main);
            seek.extend_from_slice(&[0u8; 4]);
            if k < seek.as_slice() {
                it.seek(&seek);
                if !it.valid() {
                    break;
                }
            }
            let Some(k2) = it.key() else { break };
            if k2.len() == group.len() + 12 && k2.starts_with(&group) {
                let kv: KeyValue = decode(CF_VER, it.value().unwrap_or_default())?;
                if kv.version != 0 {
                    count += 1;
                    if limit == 0 || out.len() < limit {
                        let mut kv = kv;
                        if keys_only {
                            kv.value.clear();
                        }
                        out.push(kv);
                    }
                    if stop_after.is_some_and(|s| count >= s) {
                        break;
                    }
                }
            }
            // Past every version of this key: the group prefix followed by 0xFF..., which no
            // version suffix reaches since !main of a positive revision starts below 0xFF.. only
            // for main = 0.
            let mut next = group;
            next.extend_from_slice(&[0xFF; 13]);
            it.seek(&next);
        }
        it.status()?;
        Ok((out, count))
    }

    /// A read outside any write transaction, from one consistent view. Also returns the store
    /// revision of that view (the response header's revision).
    pub fn range(&self, req: &RangeRequest) -> MvccResult<Result<RangeResponse, ApplyError>> {
        Ok(self.range_with(req, None, true)?.map(|(r, _)| r))
    }

    pub fn range_at_view(&self, req: &RangeRequest) -> MvccResult<Result<(RangeResponse, Revision), ApplyError>> {
        self.range_with(req, None, true)
    }

    /// Like range_at_view, but for paging: the scan stops one key past the limit, so `more` is
    /// right and `count` is only a lower bound (limit + 1 when more remain). Keeps a page read
    /// O(limit) instead of O(range).
    pub fn range_page_at_view(&self, req: &RangeRequest) -> MvccResult<Result<(RangeResponse, Revision), ApplyError>> {
        self.range_with(req, None, false)
    }

    fn snap_meta_i64(&self, snap: &Snapshot<'_>, key: &[u8]) -> MvccResult<Option<i64>> {
        meta_i64(snap.get_cf(self.cf(CF_META), key)?)
    }

    fn range_with(
        &self,
        req: &RangeRequest,
        pending: Option<(&BTreeMap<Vec<u8>, Option<KeyValue>>, Revision)>,
        exact_count: bool,
    ) -> MvccResult<Result<(RangeResponse, Revision), ApplyError>> {
        // Everything below reads one consistent view: a concurrent apply or background compaction
        // can neither mix revisions into a list nor remove versions it still needs.
        let snap = self.db.snapshot();
        let db_rev = self.snap_meta_i64(&snap, META_REVISION)?.unwrap_or(1);
        let current = match pending {
            Some((_, r)) => r,
            None => db_rev,
        };
        let rev = if req.revision <= 0 { current } else { req.revision };
        // Inside a batch, revisions written by earlier commands of the same entry are not in the
        // store yet: only the entry's latest state (the overlay) or committed ones are readable.
        if rev > current || (rev > db_rev && rev != current) {
            return Ok(Err(ApplyError::FutureRevision));
        }
        let compact = self.snap_meta_i64(&snap, META_COMPACT)?.unwrap_or(0);
        if rev < compact {
            return Ok(Err(ApplyError::Compacted { compact_revision: compact }));
        }
        let needs_all = req.sort_order != SortOrder::None
            || req.sort_target != SortTarget::Key
            || req.min_mod_revision > 0
            || req.max_mod_revision > 0
            || req.min_create_revision > 0
            || req.max_create_revision > 0;
        let overlay: Vec<(&Vec<u8>, &Option<KeyValue>)> = match pending {
            Some((cur, _)) if rev == current => cur.iter().filter(|(k, _)| in_range(k, &req.key, &req.range_end)).collect(),
            _ => Vec::new(),
        };
        let limit = if needs_all || !overlay.is_empty() || req.limit <= 0 { 0 } else { req.limit as usize };
        let keys_only = req.keys_only && overlay.is_empty();
        let stop_after = (!exact_count && limit > 0).then_some(limit as i64 + 1);
        let res = if rev >= db_rev {
            self.scan_cur(&snap, &req.key, &req.range_end, limit, keys_only, stop_after)
        } else {
            self.scan_at(&snap, &req.key, &req.range_end, rev, limit, keys_only, stop_after)
        };
        let (mut kvs, mut count) = res?;
        if !overlay.is_empty() {
            let mut merged: BTreeMap<Vec<u8>, KeyValue> = kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
            for (k, v) in overlay {
                match v {
                    Some(kv) => merged.insert(k.clone(), kv.clone()),
                    None => merged.remove(k),
                };
            }
            kvs = merged.into_values().collect();
            count = kvs.len() as i64;
            if req.keys_only {
                kvs.iter_mut().for_each(|kv| kv.value.clear());
            }
        }
        let unfiltered_count = count;
        if needs_all {
            kvs.retain(|kv| {
                (req.min_mod_revision <= 0 || kv.mod_revision >= req.min_mod_revision)
                    && (req.max_mod_revision <= 0 || kv.mod_revision <= req.max_mod_revision)
                    && (req.min_create_revision <= 0 || kv.create_revision >= req.min_create_revision)
                    && (req.max_create_revision <= 0 || kv.create_revision <= req.max_create_revision)
            });
            match req.sort_target {
                SortTarget::Key => kvs.sort_by(|a, b| a.key.cmp(&b.key)),
                SortTarget::Version => kvs.sort_by_key(|kv| kv.version),
                SortTarget::Create => kvs.sort_by_key(|kv| kv.create_revision),
                SortTarget::Mod => kvs.sort_by_key(|kv| kv.mod_revision),
                SortTarget::Value => kvs.sort_by(|a, b| a.value.cmp(&b.value)),
            }
            if req.sort_order == SortOrder::Descend {
                kvs.reverse();
            }
            // etcd reports the count of the range, before the revision filters.
            count = unfiltered_count;
        }
        let mut more = false;
        if req.limit > 0 && kvs.len() > req.limit as usize {
            kvs.truncate(req.limit as usize);
            more = true;
        } else if req.limit > 0 && limit > 0 && (count as usize) > kvs.len() {
            // The scan stopped at the limit but counted everything.
            more = true;
        }
        if req.count_only {
            kvs.clear();
        }
        Ok(Ok((RangeResponse { kvs, more, count }, current)))
    }

    pub fn lease(&self, id: i64) -> MvccResult<Option<LeaseRecord>> {
        match self.db.get_cf(self.cf(CF_LEASE), lease_key(id))? {
            None => Ok(None),
            Some(v) => Ok(Some(decode(CF_LEASE, &v)?)),
        }
    }

    pub fn leases(&self) -> MvccResult<Vec<LeaseRecord>> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_LEASE), IteratorMode::Start) {
            let (_, v) = item?;
            out.push(decode(CF_LEASE, &v)?);
        }
        Ok(out)
    }

    pub fn lease_keys(&self, id: i64) -> MvccResult<Vec<Vec<u8>>> {
        let prefix = lease_key(id);
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_LEASE_KEYS), IteratorMode::From(&prefix, Direction::Forward)) {
            let (k, _) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            out.push(k[8..].to_vec());
        }
        Ok(out)
    }

    /// Events with revision in [from, to], in order, at most about `max_events` (always whole
    /// revisions), read from one consistent view. Fails with `Compacted` if that view no longer
    /// holds revision `from`. Used by watchers catching up from the past.
    pub fn history(&self, from: Revision, to: Revision, max_events: usize) -> MvccResult<Result<Vec<RevisionEvents>, ApplyError>> {
        let snap = self.db.snapshot();
        let compact = self.snap_meta_i64(&snap, META_COMPACT)?.unwrap_or(0);
        if from < compact {
            return Ok(Err(ApplyError::Compacted { compact_revision: compact }));
        }
        let mut out: Vec<RevisionEvents> = Vec::new();
        let mut n = 0usize;
        let start = rev_key(from.max(1), 0);
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(rev_key(to + 1, 0).to_vec());
        let iter = snap.iterator_cf_opt(self.cf(CF_REV), ro, IteratorMode::From(&start, Direction::Forward));
        for item in iter {
            let (k, key) = item?;
            let Some((main, sub)) = parse_rev_key(&k) else {
                return Err(MvccError::Corrupt { cf: CF_REV, detail: "bad revision key".into() });
            };
            if n >= max_events && out.last().map(|r| r.revision) != Some(main) {
                break;
            }
            let vk = ver_key(&key, main, sub);
            let Some(v) = snap.get_cf(self.cf(CF_VER), &vk)? else {
                return Err(MvccError::Corrupt { cf: CF_VER, detail: format!("missing version {main}.{sub}") });
            };
            let kv: KeyValue = decode(CF_VER, &v)?;
            let prev_kv = self.prev_version(&snap, &key, &vk)?;
            let event = if kv.version == 0 {
                Event { kind: EventKind::Delete, kv, prev_kv }
            } else {
                Event { kind: EventKind::Put, kv, prev_kv }
            };
            match out.last_mut() {
                Some(r) if r.revision == main => r.events.push(event),
                _ => out.push(RevisionEvents { revision: main, events: vec![event] }),
            }
            n += 1;
        }
        Ok(Ok(out))
    }

    fn prev_version(&self, snap: &rocksdb::Snapshot<'_>, key: &[u8], vk: &[u8]) -> MvccResult<Option<KeyValue>> {
        let prefix = encode_key(key);
        let mut it = snap.raw_iterator_cf(self.cf(CF_VER));
        it.seek(vk);
        if it.valid() {
            it.next();
        }
        if it.valid() {
            if let (Some(k), Some(v)) = (it.key(), it.value()) {
                if k.len() == prefix.len() + 12 && k.starts_with(&prefix) {
                    let kv: KeyValue = decode(CF_VER, v)?;
                    return Ok(if kv.version == 0 { None } else { Some(kv) });
                }
            }
        }
        it.status()?;
        Ok(None)
    }

    /// Moves every memtable to SST files.
    pub fn flush(&self) -> MvccResult<()> {
        let _w = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        for cf in ALL_CFS {
            self.db.flush_cf(self.cf(cf))?;
        }
        Ok(())
    }

    /// Approximate bytes on disk (SST files plus memtables).
    pub fn size_bytes(&self) -> u64 {
        let mut total = 0;
        for cf in ALL_CFS {
            let h = self.cf(cf);
            for p in ["rocksdb.total-sst-files-size", "rocksdb.cur-size-all-mem-tables"] {
                total += self.db.property_int_value_cf(h, p).ok().flatten().unwrap_or(0);
            }
        }
        total
    }

    // ---------------------------------------------------------------- writes

    pub fn begin(&self) -> ApplyBatch {
        let rev = self.current_revision();
        ApplyBatch {
            batch: WriteBatch::default(),
            cur: BTreeMap::new(),
            leases: HashMap::new(),
            lease_keys: BTreeMap::new(),
            base_revision: rev,
            revision: rev,
            compact_revision: self.compact_revision(),
            events: Vec::new(),
            meta: Vec::new(),
        }
    }

    /// Writes the batch without the WAL (the Raft log is the durable source; after a crash the
    /// state machine restarts from its last flush, whose applied log id is part of it, and
    /// replays the log from there) and publishes its revision to readers.
    pub fn commit(&self, mut b: ApplyBatch) -> MvccResult<Vec<RevisionEvents>> {
        let meta = self.cf(CF_META);
        if b.revision != b.base_revision {
            b.batch.put_cf(meta, META_REVISION, b.revision.to_be_bytes());
        }
        if b.compact_revision != self.compact_revision() {
            b.batch.put_cf(meta, META_COMPACT, b.compact_revision.to_be_bytes());
        }
        for (k, v) in std::mem::take(&mut b.meta) {
            b.batch.put_cf(meta, k, v);
        }
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        let _w = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.db.write_opt(std::mem::take(&mut b.batch), &wo)?;
        self.compact_revision.store(b.compact_revision, Ordering::SeqCst);
        self.revision.store(b.revision, Ordering::SeqCst);
        Ok(b.events)
    }

    fn pending_get(&self, b: &ApplyBatch, key: &[u8]) -> MvccResult<Option<KeyValue>> {
        match b.cur.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.get_cur(key),
        }
    }

    fn pending_lease(&self, b: &ApplyBatch, id: i64) -> MvccResult<Option<LeaseRecord>> {
        match b.leases.get(&id) {
            Some(v) => Ok(v.clone()),
            None => self.lease(id),
        }
    }

    fn pending_keys_in(&self, b: &ApplyBatch, start: &[u8], end: &[u8]) -> MvccResult<Vec<KeyValue>> {
        let snap = self.db.snapshot();
        let (kvs, _) = self.scan_cur(&snap, start, end, 0, false, None)?;
        let mut merged: BTreeMap<Vec<u8>, KeyValue> = kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
        for (k, v) in b.cur.iter().filter(|(k, _)| in_range(k, start, end)) {
            match v {
                Some(kv) => merged.insert(k.clone(), kv.clone()),
                None => merged.remove(k),
            };
        }
        Ok(merged.into_values().collect())
    }

    /// Applies one command into `b`. Deterministic: the same command on the same state gives the
    /// same result and writes on every replica.
    pub fn apply(&self, b: &mut ApplyBatch, cmd: &Command) -> MvccResult<Response> {
        let result = match cmd {
            Command::Txn(t) => self.apply_txn(b, t).map(|r| r.map(CommandResult::Txn)),
            Command::Compact { revision } => self.apply_compact(b, *revision),
            Command::LeaseGrant { id, ttl } => {
                if *id <= 0 {
                    Ok(Err(ApplyError::LeaseNotFound))
                } else if self.pending_lease(b, *id)?.is_some() {
                    Ok(Err(ApplyError::LeaseExists))
                } else {
                    let rec = LeaseRecord { id: *id, ttl: (*ttl).max(MIN_LEASE_TTL) };
                    b.batch.put_cf(self.cf(CF_LEASE), lease_key(*id), encode(&rec));
                    b.leases.insert(*id, Some(rec.clone()));
                    Ok(Ok(CommandResult::LeaseGranted { id: *id, ttl: rec.ttl }))
                }
            }
            Command::LeaseRevoke { id } => self.apply_lease_revoke(b, *id),
            Command::Batch(cmds) => {
                let mut out = Vec::with_capacity(cmds.len());
                for c in cmds {
                    out.push(self.apply(b, c)?);
                }
                Ok(Ok(CommandResult::Batch(out)))
            }
        }?;
        Ok(Response { revision: b.revision, result })
    }

    fn apply_lease_revoke(&self, b: &mut ApplyBatch, id: i64) -> MvccResult<Result<CommandResult, ApplyError>> {
        if self.pending_lease(b, id)?.is_none() {
            return Ok(Err(ApplyError::LeaseNotFound));
        }
        let mut keys: Vec<Vec<u8>> = self.lease_keys(id)?;
        for ((lid, k), attached) in b.lease_keys.range((id, Vec::new())..) {
            if *lid != id {
                break;
            }
            if *attached {
                keys.push(k.clone());
            } else {
                keys.retain(|x| x != k);
            }
        }
        keys.sort();
        keys.dedup();
        let mut txn = WriteTxn { main: b.revision + 1, sub: 0, events: Vec::new() };
        for k in keys {
            // Only delete keys still attached to this lease.
            if let Some(kv) = self.pending_get(b, &k)? {
                if kv.lease == id {
                    self.delete_key(b, &mut txn, kv);
                }
            }
        }
        b.batch.delete_cf(self.cf(CF_LEASE), lease_key(id));
        b.leases.insert(id, None);
        self.finish_txn(b, txn);
        Ok(Ok(CommandResult::LeaseRevoked))
    }

    fn apply_compact(&self, b: &mut ApplyBatch, rev: Revision) -> MvccResult<Result<CommandResult, ApplyError>> {
        if rev <= b.compact_revision {
            return Ok(Err(ApplyError::Compacted { compact_revision: b.compact_revision }));
        }
        if rev > b.revision {
            return Ok(Err(ApplyError::FutureRevision));
        }
        // Logical compaction only: reads and watches below `rev` fail from now on. The versions
        // they would have needed are removed by `compact_step` in the background (as etcd does),
        // so a large compaction never stalls the entries applied after it.
        b.compact_revision = rev;
        Ok(Ok(CommandResult::Compacted))
    }

    /// How far physical compaction has got (everything below is gone).
    pub fn physically_compacted(&self) -> MvccResult<Revision> {
        Ok(self.read_meta_i64(META_PHYSICAL)?.unwrap_or(0))
    }

    /// Removes a chunk of what compaction made unreachable: event-log entries below the
    /// compaction revision, and every version of a key older than its newest version at or below
    /// it (and that one too if it is a tombstone below it). Returns true once caught up.
    /// Invisible to readers: they only read at or above the compaction revision, from snapshots.
    pub fn compact_step(&self, max_events: usize) -> MvccResult<bool> {
        let target = self.compact_revision();
        let done = self.physically_compacted()?;
        if done >= target {
            return Ok(true);
        }
        let from = done.max(1);
        let mut batch = WriteBatch::default();
        let mut keys: Vec<Vec<u8>> = Vec::new();
        let mut upto = target;
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(rev_key(target, 0).to_vec());
        let iter = self.db.iterator_cf_opt(self.cf(CF_REV), ro, IteratorMode::From(&rev_key(from, 0), Direction::Forward));
        let mut last_main = 0;
        for item in iter {
            let (k, key) = item?;
            let Some((main, _)) = parse_rev_key(&k) else {
                return Err(MvccError::Corrupt { cf: CF_REV, detail: "bad revision key".into() });
            };
            // Stop between revisions, never inside one.
            if keys.len() >= max_events && main != last_main {
                upto = main;
                break;
            }
            last_main = main;
            batch.delete_cf(self.cf(CF_REV), &k);
            keys.push(key.to_vec());
        }
        keys.sort();
        keys.dedup();
        for key in keys {
            let prefix = encode_key(&key);
            let mut it = self.db.raw_iterator_cf(self.cf(CF_VER));
            it.seek(ver_key(&key, target, u32::MAX));
            let mut first = true;
            while it.valid() {
                let Some(k) = it.key() else { break };
                if !(k.len() == prefix.len() + 12 && k.starts_with(&prefix)) {
                    break;
                }
                // The newest version at or below `target` survives if live; a tombstone survives
                // only at exactly `target`, whose event stays in the log for watchers from there.
                let kv: KeyValue = decode(CF_VER, it.value().unwrap_or_default())?;
                let keep = (first && kv.version != 0) || kv.mod_revision == target;
                if !keep {
                    batch.delete_cf(self.cf(CF_VER), k);
                }
                first = false;
                it.next();
            }
            it.status()?;
        }
        batch.put_cf(self.cf(CF_META), META_PHYSICAL, upto.to_be_bytes());
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        let _w = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.db.write_opt(batch, &wo)?;
        Ok(upto >= target)
    }

    fn check_txn(&self, b: &ApplyBatch, t: &TxnRequest) -> MvccResult<Result<bool, ApplyError>> {
        // Result kept for future compare errors (none today).
        for c in &t.compare {
            let kvs: Vec<Option<KeyValue>> = if c.range_end.is_empty() {
                vec![self.pending_get(b, &c.key)?]
            } else {
                self.pending_keys_in(b, &c.key, &c.range_end)?.into_iter().map(Some).collect()
            };
            if kvs.is_empty() && !compare_one(None, c) {
                // etcd compares an empty range as one absent key.
                return Ok(Ok(false));
            }
            for kv in kvs {
                if !compare_one(kv.as_ref(), c) {
                    return Ok(Ok(false));
                }
            }
        }
        Ok(Ok(true))
    }

    fn apply_txn(&self, b: &mut ApplyBatch, t: &TxnRequest) -> MvccResult<Result<TxnResponse, ApplyError>> {
        let succeeded = match self.check_txn(b, t)? {
            Ok(s) => s,
            Err(e) => return Ok(Err(e)),
        };
        let ops = if succeeded { &t.success } else { &t.failure };
        if let Err(e) = self.validate_ops(b, ops)? {
            return Ok(Err(e));
        }
        let mut txn = WriteTxn { main: b.revision + 1, sub: 0, events: Vec::new() };
        let responses = self.exec_ops(b, &mut txn, ops)?;
        let responses = match responses {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        self.finish_txn(b, txn);
        Ok(Ok(TxnResponse { succeeded, responses }))
    }

    /// Checks that would otherwise fail half-way: leases of puts exist, ignore_* keys exist.
    fn validate_ops(&self, b: &ApplyBatch, ops: &[Op]) -> MvccResult<Result<(), ApplyError>> {
        for op in ops {
            match op {
                Op::Put(p) => {
                    if p.key.is_empty() {
                        return Ok(Err(ApplyError::EmptyKey));
                    }
                    if p.lease != 0 && !p.ignore_lease && self.pending_lease(b, p.lease)?.is_none() {
                        return Ok(Err(ApplyError::LeaseNotFound));
                    }
                    if (p.ignore_value || p.ignore_lease) && self.pending_get(b, &p.key)?.is_none() {
                        return Ok(Err(ApplyError::KeyNotFound));
                    }
                }
                Op::Txn(inner) => {
                    // Nested txns choose their branch at execution; validate both.
                    if let Err(e) = self.validate_ops(b, &inner.success)? {
                        return Ok(Err(e));
                    }
                    if let Err(e) = self.validate_ops(b, &inner.failure)? {
                        return Ok(Err(e));
                    }
                }
                Op::Range(r) => {
                    if r.revision > 0 && r.revision < b.compact_revision {
                        return Ok(Err(ApplyError::Compacted { compact_revision: b.compact_revision }));
                    }
                    if r.revision > b.revision {
                        return Ok(Err(ApplyError::FutureRevision));
                    }
                }
                Op::Delete(_) => {}
            }
        }
        Ok(Ok(()))
    }

    fn exec_ops(&self, b: &mut ApplyBatch, txn: &mut WriteTxn, ops: &[Op]) -> MvccResult<Result<Vec<OpResponse>, ApplyError>> {
        let mut out = Vec::with_capacity(ops.len());
        for op in ops {
            let r = match op {
                Op::Range(r) => {
                    // Reads see this transaction's earlier writes.
                    let visible = if txn.sub > 0 { txn.main } else { b.revision };
                    match self.range_with(r, Some((&b.cur, visible)), true)? {
                        Ok((resp, _)) => OpResponse::Range(resp),
                        Err(e) => return Ok(Err(e)),
                    }
                }
                Op::Put(p) => {
                    let old = self.pending_get(b, &p.key)?;
                    let mut kv = KeyValue {
                        key: p.key.clone(),
                        create_revision: old.as_ref().map(|o| o.create_revision).unwrap_or(txn.main),
                        mod_revision: txn.main,
                        version: old.as_ref().map(|o| o.version).unwrap_or(0) + 1,
                        value: p.value.clone(),
                        lease: p.lease,
                    };
                    if p.ignore_value {
                        kv.value = old.as_ref().map(|o| o.value.clone()).unwrap_or_default();
                    }
                    if p.ignore_lease {
                        kv.lease = old.as_ref().map(|o| o.lease).unwrap_or(0);
                    }
                    self.put_key(b, txn, kv, old.clone());
                    OpResponse::Put { prev_kv: if p.prev_kv { old } else { None } }
                }
                Op::Delete(d) => {
                    let kvs = self.pending_keys_in(b, &d.key, &d.range_end)?;
                    let deleted = kvs.len() as i64;
                    let mut prev = Vec::new();
                    for kv in kvs {
                        if d.prev_kv {
                            prev.push(kv.clone());
                        }
                        self.delete_key(b, txn, kv);
                    }
                    OpResponse::Delete { deleted, prev_kvs: prev }
                }
                Op::Txn(inner) => {
                    let succeeded = match self.check_txn(b, inner)? {
                        Ok(s) => s,
                        Err(e) => return Ok(Err(e)),
                    };
                    let ops = if succeeded { &inner.success } else { &inner.failure };
                    match self.exec_ops(b, txn, ops)? {
                        Ok(responses) => OpResponse::Txn(TxnResponse { succeeded, responses }),
                        Err(e) => return Ok(Err(e)),
                    }
                }
            };
            out.push(r);
        }
        Ok(Ok(out))
    }

    fn put_key(&self, b: &mut ApplyBatch, txn: &mut WriteTxn, kv: KeyValue, old: Option<KeyValue>) {
        let sub = txn.sub;
        txn.sub += 1;
        let enc = encode(&kv);
        b.batch.put_cf(self.cf(CF_CUR), &kv.key, &enc);
        b.batch.put_cf(self.cf(CF_VER), ver_key(&kv.key, txn.main, sub), &enc);
        b.batch.put_cf(self.cf(CF_REV), rev_key(txn.main, sub), &kv.key);
        if let Some(o) = &old {
            if o.lease != 0 && o.lease != kv.lease {
                b.batch.delete_cf(self.cf(CF_LEASE_KEYS), lease_key_entry(o.lease, &kv.key));
                b.lease_keys.insert((o.lease, kv.key.clone()), false);
            }
        }
        if kv.lease != 0 {
            b.batch.put_cf(self.cf(CF_LEASE_KEYS), lease_key_entry(kv.lease, &kv.key), []);
            b.lease_keys.insert((kv.lease, kv.key.clone()), true);
        }
        b.cur.insert(kv.key.clone(), Some(kv.clone()));
        txn.events.push(Event { kind: EventKind::Put, kv, prev_kv: old });
    }

    fn delete_key(&self, b: &mut ApplyBatch, txn: &mut WriteTxn, old: KeyValue) {
        let sub = txn.sub;
        txn.sub += 1;
        let tomb = KeyValue { key: old.key.clone(), mod_revision: txn.main, ..Default::default() };
        b.batch.delete_cf(self.cf(CF_CUR), &old.key);
        b.batch.put_cf(self.cf(CF_VER), ver_key(&old.key, txn.main, sub), encode(&tomb));
        b.batch.put_cf(self.cf(CF_REV), rev_key(txn.main, sub), &old.key);
        if old.lease != 0 {
            b.batch.delete_cf(self.cf(CF_LEASE_KEYS), lease_key_entry(old.lease, &old.key));
            b.lease_keys.insert((old.lease, old.key.clone()), false);
        }
        b.cur.insert(old.key.clone(), None);
        txn.events.push(Event { kind: EventKind::Delete, kv: tomb, prev_kv: Some(old) });
    }

    fn finish_txn(&self, b: &mut ApplyBatch, txn: WriteTxn) {
        if txn.sub > 0 {
            b.revision = txn.main;
            b.events.push(RevisionEvents { revision: txn.main, events: txn.events });
        }
    }
}

fn compare_one(kv: Option<&KeyValue>, c: &Compare) -> bool {
    use std::cmp::Ordering as O;
    let ord = match &c.target {
        CompareTarget::Version(v) => kv.map(|k| k.version).unwrap_or(0).cmp(v),
        CompareTarget::Create(v) => kv.map(|k| k.create_revision).unwrap_or(0).cmp(v),
        CompareTarget::Mod(v) => kv.map(|k| k.mod_revision).unwrap_or(0).cmp(v),
        CompareTarget::Lease(v) => kv.map(|k| k.lease).unwrap_or(0).cmp(v),
        CompareTarget::Value(v) => match kv {
            // etcd: a value compare against a missing key fails.
            None => return false,
            Some(k) => k.value.as_slice().cmp(v.as_slice()),
        },
    };
    match c.result {
        CompareResult::Equal => ord == O::Equal,
        CompareResult::NotEqual => ord != O::Equal,
        CompareResult::Greater => ord == O::Greater,
        CompareResult::Less => ord == O::Less,
    }
}

#[cfg(test)]
mod tests;
