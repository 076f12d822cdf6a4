//! MVCC key-value store over RocksDB with etcd's semantics: one global revision per write
//! transaction, every version kept until compaction, leases with attached keys.
//!
//! It knows nothing about Raft: the state machine hands it commands in log order and persists the
//! applied log id through [`Mvcc::apply`]'s `extra_meta`. Reads may run concurrently with apply.
//!
//! Column families:
//! - `ver`: memcomparable(key) ++ !main ++ !sub -> [`KeyValue`] (all versions, newest first;
//!   tombstones have version 0): every value, read at the current revision through the index
//!   below, at past revisions by seeking, and for watch replay
//! - `rev`: main ++ sub -> user key (the event log, for watch catch-up and compaction)
//! - `lease`: id -> [`LeaseRecord`]; `lease_keys`: id ++ key -> ()
//! - `meta`: current revision, compact revision, and whatever the caller stores there
//!
//! In memory, an index of the live keys (etcd's treeIndex, for the newest version only): key ->
//! create/mod revision, version, lease and sub-revision, so a write learns what it replaces
//! without a RocksDB read, and a read at the current revision finds each key's `ver` row (or
//! answers count and keys-only reads) from memory. It is rebuilt from `ver` at open. A `cur`
//! column family holding a copy of every live value was dropped: its memtable insert and the
//! point read of the previous version were a third of a busy replica's apply time.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, ReadOptions, Snapshot, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};

use crate::types::*;

/// Held every live value before the in-memory index replaced it; dropped when an old store opens.
const CF_LEGACY_CUR: &str = "cur";
pub const CF_VER: &str = "ver";
pub const CF_REV: &str = "rev";
pub const CF_LEASE: &str = "lease";
pub const CF_LEASE_KEYS: &str = "lease_keys";
pub const CF_META: &str = "meta";
pub const ALL_CFS: [&str; 5] = [CF_VER, CF_REV, CF_LEASE, CF_LEASE_KEYS, CF_META];
/// Column families by their tag in snapshot files (the position). Tag 0 is the dropped `cur`:
/// snapshots taken before it went still load, their `cur` records skipped.
pub const SNAPSHOT_CFS: [&str; 6] = [CF_LEGACY_CUR, CF_VER, CF_REV, CF_LEASE, CF_LEASE_KEYS, CF_META];

const META_REVISION: &[u8] = b"revision";
const META_COMPACT: &[u8] = b"compact";
const META_PHYSICAL: &[u8] = b"compact_physical";
const META_FORMAT: &[u8] = b"format";

/// The layout of the state machine's data. 1 (never written): live values also kept in a `cur`
/// family. 2: `cur` dropped, live keys indexed in memory from `ver`. A binary refuses a data dir
/// (or snapshot) of a newer format instead of misreading it; an older one is upgraded at open.
pub const STORE_FORMAT: i64 = 2;

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
    #[error("written by a newer kuberaft (store format {found}; this binary reads up to {STORE_FORMAT}): run that version or newer")]
    NewerFormat { found: i64 },
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
    /// The live keys at `revision`. A commit writes RocksDB first, then updates this and the
    /// revision counters under the write half; a reader takes a RocksDB snapshot under the read
    /// half, so every `ver` row the index names is in that snapshot (compaction never removes a
    /// key's newest version, and cannot pass a revision the index has not published yet).
    index: RwLock<BTreeMap<Vec<u8>, Cur>>,
}

/// The index's entry for a live key: its newest version's fields except the value, and where
/// that version is stored (`ver` at mod_revision.sub).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cur {
    create_revision: Revision,
    mod_revision: Revision,
    version: i64,
    lease: i64,
    sub: u32,
}

impl Cur {
    fn of(kv: &KeyValue, sub: u32) -> Cur {
        Cur { create_revision: kv.create_revision, mod_revision: kv.mod_revision, version: kv.version, lease: kv.lease, sub }
    }

    /// The key's fields without its value.
    fn kv(&self, key: &[u8]) -> KeyValue {
        KeyValue { key: key.to_vec(), create_revision: self.create_revision, mod_revision: self.mod_revision, version: self.version, value: Vec::new(), lease: self.lease }
    }
}

/// A key written by an earlier command of the batch being applied (None: deleted).
#[derive(Clone, Debug)]
struct Pending {
    kv: KeyValue,
    sub: u32,
}

type Overlay = BTreeMap<Vec<u8>, Option<Pending>>;

/// etcd-style [start, end) key ranges.
pub type KeyRanges = Arc<Vec<(Vec<u8>, Vec<u8>)>>;

/// Put events of which keys carry the value they replace.
#[derive(Clone, Debug)]
pub enum WantPrev {
    All,
    /// Keys in any of these etcd-style [start, end) ranges (those of open watchers that asked).
    In(KeyRanges),
}

impl WantPrev {
    fn covers(&self, key: &[u8]) -> bool {
        match self {
            WantPrev::All => true,
            WantPrev::In(ranges) => ranges.iter().any(|(s, e)| in_range(key, s, e)),
        }
    }
}

/// The keys of `index` in etcd's [start, end).
fn index_range<'a>(index: &'a BTreeMap<Vec<u8>, Cur>, start: &'a [u8], end: &'a [u8]) -> std::collections::btree_map::Range<'a, Vec<u8>, Cur> {
    let upper = if end.is_empty() {
        Bound::Included(start)
    } else if end == [0] {
        Bound::Unbounded
    } else {
        // An end at or before the start is an empty range (BTreeMap::range would panic on it).
        Bound::Excluded(end.max(start))
    };
    index.range::<[u8], _>((Bound::Included(start), upper))
}

/// A version the index names is missing from `ver`.
fn missing_version(c: &Cur) -> MvccError {
    MvccError::Corrupt { cf: CF_VER, detail: format!("the index names version {}.{} of a key that is not stored", c.mod_revision, c.sub) }
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
    cur: Overlay,
    /// Which put events carry the value they replace (`prev_kv`). Any other put event of a
    /// key that existed (version > 1) has no `prev_kv`, and a watcher that wants it reads it
    /// from storage at delivery, as etcd does ([`Mvcc::prev_version_of`]).
    want_prev: WantPrev,
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
    /// Which put events must carry the replaced value (all unless set otherwise).
    pub fn want_prev_kv(&mut self, w: WantPrev) {
        self.want_prev = w;
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

    /// Opens (or creates) the store in `dir`. A store written before the in-memory index has a
    /// `cur` column family with copies of the live values; it is dropped (`ver` has them all).
    pub fn open(dir: &Path) -> MvccResult<Mvcc> {
        let opts = Self::db_options();
        let legacy = DB::list_cf(&opts, dir).map(|cfs| cfs.iter().any(|c| c == CF_LEGACY_CUR)).unwrap_or(false);
        let mut cfs = Self::cf_descriptors();
        if legacy {
            cfs.push(ColumnFamilyDescriptor::new(CF_LEGACY_CUR, Options::default()));
        }
        let mut db = DB::open_cf_descriptors(&opts, dir, cfs)?;
        if legacy {
            db.drop_cf(CF_LEGACY_CUR)?;
        }
        Self::from_db(Arc::new(db))
    }

    pub fn from_db(db: Arc<DB>) -> MvccResult<Mvcc> {
        let m = Mvcc {
            db,
            revision: AtomicI64::new(0),
            compact_revision: AtomicI64::new(0),
            write_lock: std::sync::Mutex::new(()),
            index: RwLock::new(BTreeMap::new()),
        };
        let format = m.check_format()?;
        let rev = m.read_meta_i64(META_REVISION)?.unwrap_or(1);
        let compact = m.read_meta_i64(META_COMPACT)?.unwrap_or(0);
        m.revision.store(rev, Ordering::SeqCst);
        m.compact_revision.store(compact, Ordering::SeqCst);
        let index = m.build_index()?;
        *m.index.write().unwrap_or_else(|e| e.into_inner()) = index;
        if format < STORE_FORMAT {
            m.db.put_cf(m.cf(CF_META), META_FORMAT, STORE_FORMAT.to_be_bytes())?;
        }
        Ok(m)
    }

    /// The store's format (1 when unrecorded), or an error if a newer binary wrote it.
    pub fn check_format(&self) -> MvccResult<i64> {
        let format = self.read_meta_i64(META_FORMAT)?.unwrap_or(1);
        if format > STORE_FORMAT {
            return Err(MvccError::NewerFormat { found: format });
        }
        Ok(format)
    }

    /// The live keys, from the newest version of every key in `ver` (a tombstone: deleted).
    fn build_index(&self) -> MvccResult<BTreeMap<Vec<u8>, Cur>> {
        let mut index = BTreeMap::new();
        let mut it = self.db.raw_iterator_cf(self.cf(CF_VER));
        it.seek_to_first();
        while it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else { break };
            if k.len() < 14 {
                return Err(MvccError::Corrupt { cf: CF_VER, detail: "short key".into() });
            }
            let kv: KeyValue = decode(CF_VER, v)?;
            let (group, suffix) = k.split_at(k.len() - 12);
            if kv.version != 0 {
                let sub = !u32::from_be_bytes(suffix[8..].try_into().expect("4 bytes"));
                if encode_key(&kv.key) != group || kv.mod_revision != !u64::from_be_bytes(suffix[..8].try_into().expect("8 bytes")) as i64 {
                    return Err(MvccError::Corrupt { cf: CF_VER, detail: "a version's key does not match its value".into() });
                }
                index.insert(kv.key.clone(), Cur::of(&kv, sub));
            }
            // Past every older version of this key (see scan_at).
            let mut next = group.to_vec();
            next.extend_from_slice(&[0xFF; 13]);
            it.seek(&next);
        }
        it.status()?;
        Ok(index)
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

    /// The stored version `c` of `key`, with its value, from the live DB (the caller is the
    /// apply path, the only writer).
    fn read_version(&self, key: &[u8], c: &Cur) -> MvccResult<KeyValue> {
        let v = self.db.get_cf(self.cf(CF_VER), ver_key(key, c.mod_revision, c.sub))?;
        decode(CF_VER, &v.ok_or_else(|| missing_version(c))?)
    }

    /// The kvs of keys `found` in the index (in index order), their values read from `snap` (or
    /// the live DB, for the apply path) unless `keys_only`.
    fn scan_cur(&self, snap: Option<&Snapshot<'_>>, found: Vec<(Vec<u8>, Cur)>, keys_only: bool) -> MvccResult<Vec<KeyValue>> {
        if keys_only {
            return Ok(found.iter().map(|(k, c)| c.kv(k)).collect());
        }
        let mut ro = ReadOptions::default();
        if let Some(snap) = snap {
            ro.set_snapshot(snap);
        }
        let vks: Vec<Vec<u8>> = found.iter().map(|(k, c)| ver_key(k, c.mod_revision, c.sub)).collect();
        // Index order is key order, which is `ver` key order.
        let values = self.db.batched_multi_get_cf_opt(self.cf(CF_VER), &vks, true, &ro);
        let mut out = Vec::with_capacity(found.len());
        for ((_, c), v) in found.iter().zip(values) {
            out.push(decode(CF_VER, &v?.ok_or_else(|| missing_version(c))?)?);
        }
        Ok(out)
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
        pending: Option<(&Overlay, Revision)>,
        exact_count: bool,
    ) -> MvccResult<Result<(RangeResponse, Revision), ApplyError>> {
        // Everything below reads one consistent view (the index, the revision counters and a
        // RocksDB snapshot, taken together): a concurrent apply or background compaction can
        // neither mix revisions into a list nor remove versions it still needs.
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        let db_rev = self.revision.load(Ordering::SeqCst);
        let compact = self.compact_revision.load(Ordering::SeqCst);
        let snap = self.db.snapshot();
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
        if rev < compact {
            return Ok(Err(ApplyError::Compacted { compact_revision: compact }));
        }
        let needs_all = req.sort_order != SortOrder::None
            || req.sort_target != SortTarget::Key
            || req.min_mod_revision > 0
            || req.max_mod_revision > 0
            || req.min_create_revision > 0
            || req.max_create_revision > 0;
        let overlay: Vec<(&Vec<u8>, &Option<Pending>)> = match pending {
            Some((cur, _)) if rev == current => cur.iter().filter(|(k, _)| in_range(k, &req.key, &req.range_end)).collect(),
            _ => Vec::new(),
        };
        let limit = if needs_all || !overlay.is_empty() || req.limit <= 0 { 0 } else { req.limit as usize };
        // Values are needed for the answer and the overlay merge only.
        let keys_only = (req.keys_only || req.count_only) && overlay.is_empty();
        let stop_after = (!exact_count && limit > 0 && !req.count_only).then_some(limit as i64 + 1);
        let (mut kvs, mut count) = if rev >= db_rev {
            let mut found = Vec::new();
            let mut count = 0i64;
            // A plain count needs no key: nothing is copied while the index is locked.
            let count_only = req.count_only && overlay.is_empty() && !needs_all;
            for (k, c) in index_range(&index, &req.key, &req.range_end) {
                count += 1;
                if !count_only && (limit == 0 || found.len() < limit) {
                    found.push((k.clone(), *c));
                }
                if stop_after.is_some_and(|s| count >= s) {
                    break;
                }
            }
            drop(index);
            (self.scan_cur(Some(&snap), found, keys_only)?, count)
        } else {
            drop(index);
            self.scan_at(&snap, &req.key, &req.range_end, rev, limit, keys_only, stop_after)?
        };
        if !overlay.is_empty() {
            let mut merged: BTreeMap<Vec<u8>, KeyValue> = kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
            for (k, v) in overlay {
                match v {
                    Some(p) => merged.insert(k.clone(), p.kv.clone()),
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
            // As etcd: the count of the whole range, no kvs, and nothing "more".
            kvs.clear();
            more = false;
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
            want_prev: WantPrev::All,
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
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        for (k, v) in std::mem::take(&mut b.cur) {
            match v {
                Some(p) => index.insert(k, Cur::of(&p.kv, p.sub)),
                None => index.remove(&k),
            };
        }
        self.compact_revision.store(b.compact_revision, Ordering::SeqCst);
        self.revision.store(b.revision, Ordering::SeqCst);
        Ok(b.events)
    }

    /// The newest live version of `key` as the batch sees it: its fields, and the whole kv if
    /// the batch wrote it (else its value is read only when needed, with `full`).
    fn pending_cur(&self, b: &ApplyBatch, key: &[u8]) -> Option<(Cur, Option<KeyValue>)> {
        match b.cur.get(key) {
            Some(Some(p)) => Some((Cur::of(&p.kv, p.sub), Some(p.kv.clone()))),
            Some(None) => None,
            None => self.index.read().unwrap_or_else(|e| e.into_inner()).get(key).map(|c| (*c, None)),
        }
    }

    fn full(&self, key: &[u8], c: &Cur, kv: Option<KeyValue>) -> MvccResult<KeyValue> {
        match kv {
            Some(kv) => Ok(kv),
            None => self.read_version(key, c),
        }
    }

    /// The version a put event replaced, for a watcher that wants `prev_kv` when the apply path
    /// did not attach it: the newest version below the event's revision. None once a compaction
    /// to the event's revision or later removed it (etcd then omits prev_kv too): compaction
    /// deletes every version older than the one it keeps, so what is found is never a wrong one.
    pub fn prev_version_of(&self, kv: &KeyValue) -> MvccResult<Option<KeyValue>> {
        let snap = self.db.snapshot();
        self.get_at(&snap, &kv.key, kv.mod_revision - 1)
    }

    fn pending_lease(&self, b: &ApplyBatch, id: i64) -> MvccResult<Option<LeaseRecord>> {
        match b.leases.get(&id) {
            Some(v) => Ok(v.clone()),
            None => self.lease(id),
        }
    }

    fn pending_keys_in(&self, b: &ApplyBatch, start: &[u8], end: &[u8]) -> MvccResult<Vec<KeyValue>> {
        let found: Vec<(Vec<u8>, Cur)> = {
            let index = self.index.read().unwrap_or_else(|e| e.into_inner());
            index_range(&index, start, end).filter(|(k, _)| !b.cur.contains_key(*k)).map(|(k, c)| (k.clone(), *c)).collect()
        };
        let mut merged: BTreeMap<Vec<u8>, KeyValue> = self.scan_cur(None, found, false)?.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
        for (k, v) in b.cur.iter().filter(|(k, _)| in_range(k, start, end)) {
            if let Some(p) = v {
                merged.insert(k.clone(), p.kv.clone());
            }
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
            if let Some((c, kv)) = self.pending_cur(b, &k) {
                if c.lease == id {
                    let kv = self.full(&k, &c, kv)?;
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
                // Only a value compare needs the value.
                match self.pending_cur(b, &c.key) {
                    None => vec![None],
                    Some((cur, kv)) if matches!(c.target, CompareTarget::Value(_)) => vec![Some(self.full(&c.key, &cur, kv)?)],
                    Some((cur, kv)) => vec![Some(kv.unwrap_or_else(|| cur.kv(&c.key)))],
                }
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
        if let Err(e) = self.validate_ops(b, ops, &mut false)? {
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

    /// Checks that would otherwise fail half-way: leases of puts exist, ignore_* keys exist, and
    /// every read's revision is readable wherever it comes. Execution must not fail after a
    /// write: the writes before it would stay in the batch without their revision. `may_write`
    /// says whether an op before (in any branch) can write; it is updated for the caller.
    fn validate_ops(&self, b: &ApplyBatch, ops: &[Op], may_write: &mut bool) -> MvccResult<Result<(), ApplyError>> {
        for op in ops {
            match op {
                Op::Put(p) => {
                    if p.key.is_empty() {
                        return Ok(Err(ApplyError::EmptyKey));
                    }
                    if p.lease != 0 && !p.ignore_lease && self.pending_lease(b, p.lease)?.is_none() {
                        return Ok(Err(ApplyError::LeaseNotFound));
                    }
                    if (p.ignore_value || p.ignore_lease) && self.pending_cur(b, &p.key).is_none() {
                        return Ok(Err(ApplyError::KeyNotFound));
                    }
                }
                Op::Txn(inner) => {
                    // Nested txns choose their branch at execution; validate both.
                    let (mut then_writes, mut else_writes) = (*may_write, *may_write);
                    if let Err(e) = self.validate_ops(b, &inner.success, &mut then_writes)? {
                        return Ok(Err(e));
                    }
                    if let Err(e) = self.validate_ops(b, &inner.failure, &mut else_writes)? {
                        return Ok(Err(e));
                    }
                    *may_write = then_writes || else_writes;
                }
                Op::Range(r) => {
                    if r.revision > 0 && r.revision < b.compact_revision {
                        return Ok(Err(ApplyError::Compacted { compact_revision: b.compact_revision }));
                    }
                    if r.revision > b.revision {
                        return Ok(Err(ApplyError::FutureRevision));
                    }
                    // A revision written by an earlier command of this batch is not in RocksDB
                    // yet: it is readable (from the overlay) only while it is the latest, that is
                    // before this transaction writes.
                    if r.revision > self.current_revision() && (*may_write || r.revision != b.revision) {
                        return Ok(Err(ApplyError::FutureRevision));
                    }
                }
                Op::Delete(_) => {}
            }
            if matches!(op, Op::Put(_) | Op::Delete(_)) {
                *may_write = true;
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
                    // The replaced version's fields come from the index; its value is read only
                    // if this put or a watcher needs it.
                    let (old, old_kv) = match self.pending_cur(b, &p.key) {
                        None => (None, None),
                        Some((c, kv)) if kv.is_some() || p.prev_kv || p.ignore_value || b.want_prev.covers(&p.key) => (Some(c), Some(self.full(&p.key, &c, kv)?)),
                        Some((c, _)) => (Some(c), None),
                    };
                    let mut kv = KeyValue {
                        key: p.key.clone(),
                        create_revision: old.map(|o| o.create_revision).unwrap_or(txn.main),
                        mod_revision: txn.main,
                        version: old.map(|o| o.version).unwrap_or(0) + 1,
                        value: p.value.clone(),
                        lease: p.lease,
                    };
                    if p.ignore_value {
                        kv.value = old_kv.as_ref().map(|o| o.value.clone()).unwrap_or_default();
                    }
                    if p.ignore_lease {
                        kv.lease = old.map(|o| o.lease).unwrap_or(0);
                    }
                    self.put_key(b, txn, kv, old.map(|o| o.lease), old_kv.clone());
                    OpResponse::Put { prev_kv: if p.prev_kv { old_kv } else { None } }
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

    /// Writes `kv` as the key's new version. `old_lease` is the replaced version's lease (None:
    /// the key was not live); `prev` its whole kv when read, for the event.
    fn put_key(&self, b: &mut ApplyBatch, txn: &mut WriteTxn, kv: KeyValue, old_lease: Option<i64>, prev: Option<KeyValue>) {
        let sub = txn.sub;
        txn.sub += 1;
        b.batch.put_cf(self.cf(CF_VER), ver_key(&kv.key, txn.main, sub), encode(&kv));
        b.batch.put_cf(self.cf(CF_REV), rev_key(txn.main, sub), &kv.key);
        if let Some(o) = old_lease {
            if o != 0 && o != kv.lease {
                b.batch.delete_cf(self.cf(CF_LEASE_KEYS), lease_key_entry(o, &kv.key));
                b.lease_keys.insert((o, kv.key.clone()), false);
            }
        }
        if kv.lease != 0 {
            b.batch.put_cf(self.cf(CF_LEASE_KEYS), lease_key_entry(kv.lease, &kv.key), []);
            b.lease_keys.insert((kv.lease, kv.key.clone()), true);
        }
        b.cur.insert(kv.key.clone(), Some(Pending { kv: kv.clone(), sub }));
        txn.events.push(Event { kind: EventKind::Put, kv, prev_kv: prev });
    }

    fn delete_key(&self, b: &mut ApplyBatch, txn: &mut WriteTxn, old: KeyValue) {
        let sub = txn.sub;
        txn.sub += 1;
        let tomb = KeyValue { key: old.key.clone(), mod_revision: txn.main, ..Default::default() };
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
