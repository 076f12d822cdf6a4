//! The Raft state machine: applies committed commands to the MVCC store, publishes their events
//! to watchers, and builds, stores and installs snapshots.
//!
//! Layout under the data dir: `sm-<n>/` is a RocksDB holding the MVCC data and the applied log id
//! (written in the same batch as each entry's effects); `sm.current` names the live one. A snapshot
//! from the leader is loaded into a fresh `sm-<n+1>/`, made durable, and only then does a rename
//! of `sm.current` switch to it: a crash at any point leaves one complete state machine.
//! `snapshots/` holds the latest built or received snapshot file and its metadata.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, StorageIOError};
use rocksdb::{IteratorMode, WriteBatch, WriteOptions};
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;

use crate::metrics::Metrics;
use crate::mvcc::{KeyRanges, Mvcc, RevisionEvents, WantPrev, CF_META, SNAPSHOT_CFS};
use crate::types::*;

const META_APPLIED: &[u8] = b"raft_applied";
const META_MEMBERSHIP: &[u8] = b"raft_membership";
const SNAP_MAGIC: &[u8; 8] = b"KRSNAP1\n";

/// Applied batches the watch broadcast keeps (see where it is created).
const HUB_CAPACITY: usize = 32;

/// What the apply path tells open watch streams.
#[derive(Clone, Debug)]
pub enum HubMsg {
    /// Events of consecutive revisions, just applied.
    Events(Arc<Vec<RevisionEvents>>),
    /// The state machine was replaced by a snapshot: re-read from storage.
    Reset,
}

/// A state machine DB that deletes its directory once the last reader lets go of it (after a
/// snapshot replaced it).
pub struct SmHandle {
    pub mvcc: Mvcc,
    dir: PathBuf,
    retired: std::sync::atomic::AtomicBool,
}

impl Drop for SmHandle {
    fn drop(&mut self) {
        if self.retired.load(Ordering::SeqCst) {
            let dir = self.dir.clone();
            // The DB closes when `mvcc` drops right after this; remove the files from a thread.
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(200));
                let _ = std::fs::remove_dir_all(dir);
            });
        }
    }
}

pub struct SmShared {
    data_dir: PathBuf,
    current: RwLock<Arc<SmHandle>>,
    pub hub: broadcast::Sender<HubMsg>,
    /// The revision this replica has applied, published after the hub heard of it.
    applied_revision: tokio::sync::watch::Sender<i64>,
    pub metrics: Arc<Metrics>,
    applied: Mutex<(Option<LogId>, StoredMembership)>,
    receiving: Mutex<Option<PathBuf>>,
    /// Serializes recording the current snapshot; holds the last recorded snapshot's log id.
    snapshot_record: Mutex<Option<LogId>>,
    generation: AtomicU64,
    snap_seq: AtomicU64,
    /// The key ranges of open watchers that asked for previous values: applying a put of a key
    /// outside all of them does not read the value it replaces (see `ApplyBatch::want_prev_kv`).
    pub(crate) prev_kv_ranges: PrevKvRanges,
}

type RangeCounts = BTreeMap<(Vec<u8>, Vec<u8>), usize>;

/// A count per key range of the watchers that want previous values, and the distinct ranges
/// for the apply path, republished on every change (watch creation and removal are rare next
/// to applies).
#[derive(Default)]
pub(crate) struct PrevKvRanges {
    counts: Mutex<RangeCounts>,
    published: RwLock<KeyRanges>,
}

impl PrevKvRanges {
    pub(crate) fn add(&self, start: &[u8], end: &[u8]) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        *counts.entry((start.to_vec(), end.to_vec())).or_default() += 1;
        self.publish(&counts);
    }

    pub(crate) fn remove(&self, start: &[u8], end: &[u8]) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let key = (start.to_vec(), end.to_vec());
        if let Some(n) = counts.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&key);
            }
        }
        self.publish(&counts);
    }

    fn publish(&self, counts: &RangeCounts) {
        let ranges = Arc::new(counts.keys().cloned().collect());
        *self.published.write().unwrap_or_else(|e| e.into_inner()) = ranges;
    }

    pub(crate) fn current(&self) -> KeyRanges {
        self.published.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl SmShared {
    /// The live MVCC store. Hold the Arc only for the duration of a read.
    pub fn mvcc(&self) -> Arc<SmHandle> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn applied(&self) -> (Option<LogId>, StoredMembership) {
        self.applied.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<HubMsg> {
        self.hub.subscribe()
    }

    fn publish_revision(&self) {
        let rev = self.mvcc().mvcc.current_revision();
        self.applied_revision.send_if_modified(|cur| {
            let newer = rev > *cur;
            if newer {
                *cur = rev;
            }
            newer
        });
    }

    /// Waits until this replica has applied revision `rev` (and watchers have been told of
    /// it); false if `timeout` passed first.
    pub async fn wait_revision(&self, rev: i64, timeout: std::time::Duration) -> bool {
        let mut rx = self.applied_revision.subscribe();
        let reached = matches!(tokio::time::timeout(timeout, rx.wait_for(|r| *r >= rev)).await, Ok(Ok(_)));
        reached
    }
}

#[derive(Clone)]
pub struct StateMachine {
    pub shared: Arc<SmShared>,
}

fn sm_err<E: std::fmt::Display>(verb: ErrorVerb, e: E) -> StorageError {
    StorageIOError::new(ErrorSubject::StateMachine, verb, openraft::AnyError::error(e.to_string())).into()
}

fn snap_err<E: std::fmt::Display>(verb: ErrorVerb, e: E) -> StorageError {
    StorageIOError::new(ErrorSubject::Snapshot(None), verb, openraft::AnyError::error(e.to_string())).into()
}

fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

fn read_applied(m: &Mvcc) -> anyhow::Result<(Option<LogId>, StoredMembership)> {
    let applied = match m.get_meta(META_APPLIED)? {
        Some(v) => bincode::deserialize(&v)?,
        None => None,
    };
    let membership = match m.get_meta(META_MEMBERSHIP)? {
        Some(v) => bincode::deserialize(&v)?,
        None => StoredMembership::default(),
    };
    Ok((applied, membership))
}

impl StateMachine {
    /// Opens the live state machine under `data_dir`, creating an empty one if there is none.
    pub fn open(data_dir: &Path, metrics: Arc<Metrics>) -> anyhow::Result<StateMachine> {
        std::fs::create_dir_all(data_dir.join("snapshots"))?;
        // Snapshots being built, received or copied when the process stopped are never finished.
        for e in std::fs::read_dir(data_dir.join("snapshots"))?.flatten() {
            if e.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let pointer = data_dir.join("sm.current");
        let name = match std::fs::read_to_string(&pointer) {
            Ok(s) => s.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                write_atomic(&pointer, b"sm-1")?;
                "sm-1".to_string()
            }
            Err(e) => return Err(e.into()),
        };
        let generation: u64 = name
            .strip_prefix("sm-")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("{} names {name:?}, not a state machine directory", pointer.display()))?;
        // Remove leftovers of an install that crashed before switching, or of a retired one.
        for e in std::fs::read_dir(data_dir)?.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if n.starts_with("sm-") && n != name {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let dir = data_dir.join(&name);
        let mvcc = Mvcc::open(&dir).map_err(|e| anyhow::anyhow!("state machine at {} cannot be opened: {e}", dir.display()))?;
        let applied = read_applied(&mvcc).map_err(|e| anyhow::anyhow!("state machine at {} is corrupted: {e}", dir.display()))?;
        // Small on purpose: a receiver that falls behind is told it lagged and re-reads from
        // storage. The ring keeps its last HUB_CAPACITY batches alive even after every receiver
        // has read them (each batch holds up to 256 commands' events with previous values), so
        // this is also the watch path's resident memory: 256 cost a replica ~200 MiB under load.
        let (hub, _) = broadcast::channel(HUB_CAPACITY);
        let (applied_revision, _) = tokio::sync::watch::channel(mvcc.current_revision());
        let shared = SmShared {
            applied_revision,
            data_dir: data_dir.to_path_buf(),
            current: RwLock::new(Arc::new(SmHandle { mvcc, dir, retired: false.into() })),
            hub,
            metrics,
            applied: Mutex::new(applied),
            receiving: Mutex::new(None),
            snapshot_record: Mutex::new(None),
            generation: AtomicU64::new(generation),
            snap_seq: AtomicU64::new(0),
            prev_kv_ranges: PrevKvRanges::default(),
        };
        Ok(StateMachine { shared: Arc::new(shared) })
    }

    fn snapshots_dir(&self) -> PathBuf {
        self.shared.data_dir.join("snapshots")
    }

    /// Loads a snapshot file (ours, or an `etcdctl snapshot save` of ours) into a fresh state
    /// machine that has applied nothing: used by `kuberaft server --restore`.
    pub fn restore_from_file(data_dir: &Path, file: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(data_dir)?;
        let dir = data_dir.join("sm-1");
        if dir.exists() {
            anyhow::bail!("{} already holds a state machine; restore needs an empty data dir", data_dir.display());
        }
        let mut f = std::fs::File::open(file).map_err(|e| anyhow::anyhow!("cannot open {}: {e}", file.display()))?;
        let mvcc = Mvcc::open(&dir)?;
        // A snapshot of a newer store format is refused now, not when the server opens it.
        let loaded = load_snapshot(&mvcc, &mut f).and_then(|()| Ok(mvcc.check_format().map(drop)?));
        if let Err(e) = loaded {
            drop(mvcc);
            let _ = std::fs::remove_dir_all(&dir);
            return Err(anyhow::anyhow!("cannot restore from {}: {e}", file.display()));
        }
        let cf = mvcc.db().cf_handle(CF_META).expect("meta cf");
        mvcc.db().delete_cf(cf, META_APPLIED)?;
        mvcc.db().delete_cf(cf, META_MEMBERSHIP)?;
        mvcc.flush()?;
        drop(mvcc);
        write_atomic(&data_dir.join("sm.current"), b"sm-1")?;
        Ok(())
    }
}

/// Writes every column family of a consistent view of `m` to `w`, with a SHA-256 trailer.
/// Returns the applied log id and membership recorded in that view.
pub fn write_snapshot<W: Write>(m: &Mvcc, w: &mut W) -> anyhow::Result<(Option<LogId>, StoredMembership)> {
    let db = m.db();
    let snap = db.snapshot();
    struct Hashing<'a, W> {
        w: &'a mut W,
        hasher: Sha256,
        written: usize,
    }
    let mut hw = Hashing { w, hasher: Sha256::new(), written: 0 };
    let out = |bytes: &[u8], hw: &mut Hashing<'_, W>| -> std::io::Result<()> {
        hw.hasher.update(bytes);
        hw.written += bytes.len();
        hw.w.write_all(bytes)
    };
    out(SNAP_MAGIC, &mut hw)?;
    let mut applied = None;
    let mut membership = StoredMembership::default();
    for (i, name) in SNAPSHOT_CFS.iter().enumerate() {
        // Tags are positions in SNAPSHOT_CFS; the dropped `cur` is not written.
        let Some(cf) = db.cf_handle(name) else { continue };
        for item in snap.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = item?;
            if *name == CF_META && &*k == META_APPLIED {
                applied = bincode::deserialize(&v)?;
            }
            if *name == CF_META && &*k == META_MEMBERSHIP {
                membership = bincode::deserialize(&v)?;
            }
            let mut rec = Vec::with_capacity(9 + k.len() + v.len());
            rec.push(i as u8);
            rec.extend_from_slice(&(k.len() as u32).to_le_bytes());
            rec.extend_from_slice(&(v.len() as u32).to_le_bytes());
            rec.extend_from_slice(&k);
            rec.extend_from_slice(&v);
            out(&rec, &mut hw)?;
        }
    }
    out(&[0xFF], &mut hw)?;
    // Pad to a multiple of 512 bytes before the 32-byte digest: etcdctl's `snapshot save` checks
    // for that shape (a bbolt file plus its SHA-256).
    let pad = (512 - hw.written % 512) % 512;
    out(&vec![0u8; pad], &mut hw)?;
    let digest = hw.hasher.finalize();
    hw.w.write_all(&digest)?;
    Ok((applied, membership))
}

/// Whether the open `file` is the file at `path`.
fn same_file(file: &std::fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// Writes the whole of `from` to `to` (synced, then renamed into place).
fn copy_snapshot(from: &mut std::fs::File, to: &Path) -> std::io::Result<()> {
    let tmp = to.with_extension("copy.tmp");
    let res = (|| {
        from.seek(SeekFrom::Start(0))?;
        let mut out = std::fs::File::create(&tmp)?;
        std::io::copy(from, &mut out)?;
        out.sync_all()?;
        std::fs::rename(&tmp, to)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Loads a snapshot written by [`write_snapshot`] into an empty store, checking its trailer.
pub fn load_snapshot<R: Read>(m: &Mvcc, r: &mut R) -> anyhow::Result<()> {
    let mut r = std::io::BufReader::with_capacity(1 << 20, r);
    let mut hasher = Sha256::new();
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(|_| anyhow::anyhow!("snapshot is truncated"))?;
    if &magic != SNAP_MAGIC {
        anyhow::bail!("not a kuberaft snapshot (bad magic)");
    }
    hasher.update(magic);
    let db = m.db();
    // None: the `cur` family of snapshots from before the in-memory index, skipped.
    let cfs: Vec<_> = SNAPSHOT_CFS.iter().map(|n| db.cf_handle(n)).collect();
    let mut batch = WriteBatch::default();
    loop {
        let mut tag = [0u8; 1];
        r.read_exact(&mut tag).map_err(|_| anyhow::anyhow!("snapshot is truncated"))?;
        hasher.update(tag);
        if tag[0] == 0xFF {
            break;
        }
        let cf = *cfs.get(tag[0] as usize).ok_or_else(|| anyhow::anyhow!("snapshot names unknown column family {}", tag[0]))?;
        let mut lens = [0u8; 8];
        r.read_exact(&mut lens).map_err(|_| anyhow::anyhow!("snapshot is truncated"))?;
        hasher.update(lens);
        let kl = u32::from_le_bytes(lens[..4].try_into()?) as usize;
        let vl = u32::from_le_bytes(lens[4..].try_into()?) as usize;
        if kl > 64 << 20 || vl > 64 << 20 {
            anyhow::bail!("snapshot record too large: the file is corrupted");
        }
        let mut kv = vec![0u8; kl + vl];
        r.read_exact(&mut kv).map_err(|_| anyhow::anyhow!("snapshot is truncated"))?;
        hasher.update(&kv);
        if let Some(cf) = cf {
            batch.put_cf(cf, &kv[..kl], &kv[kl..]);
        }
        if batch.len() >= 10_000 {
            db.write(std::mem::take(&mut batch))?;
        }
    }
    // Zero padding, then the digest of everything before it.
    let mut tail = Vec::new();
    r.read_to_end(&mut tail)?;
    if tail.len() < 32 || tail.len() > 32 + 511 || tail[..tail.len() - 32].iter().any(|b| *b != 0) {
        anyhow::bail!("snapshot is truncated or has trailing garbage");
    }
    let (pad, digest) = tail.split_at(tail.len() - 32);
    hasher.update(pad);
    if digest[..] != hasher.finalize()[..] {
        anyhow::bail!("snapshot checksum mismatch: the file is corrupted");
    }
    db.write(batch)?;
    Ok(())
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredSnapshotMeta {
    meta: SnapshotMeta,
    file: String,
}

impl StateMachine {
    /// Records `meta` as the current snapshot unless a newer one is recorded already (a build can
    /// finish after a newer snapshot was installed); the loser's file is removed.
    fn save_current_snapshot(&self, meta: &SnapshotMeta, data_path: &Path) -> Result<(), StorageError> {
        let mut last = self.shared.snapshot_record.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cur) = *last {
            if meta.last_log_id.is_none_or(|l| l < cur) {
                let _ = std::fs::remove_file(data_path);
                return Ok(());
            }
        }
        *last = meta.last_log_id;
        let dir = self.snapshots_dir();
        let rec = StoredSnapshotMeta { meta: meta.clone(), file: data_path.file_name().unwrap_or_default().to_string_lossy().into() };
        let bytes = serde_json::to_vec(&rec).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        write_atomic(&dir.join("current.json"), &bytes).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        // Keep only the current snapshot file.
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "snap") && p != data_path {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let this = self.clone();
        let seq = self.shared.snap_seq.fetch_add(1, Ordering::SeqCst);
        tokio::task::spawn_blocking(move || {
            let handle = this.shared.mvcc();
            let dir = this.snapshots_dir();
            let tmp = dir.join(format!("build-{}-{seq}.tmp", std::process::id()));
            let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(|e| snap_err(ErrorVerb::Write, e))?);
            let (applied, membership) = write_snapshot(&handle.mvcc, &mut f).map_err(|e| snap_err(ErrorVerb::Write, e))?;
            let f = f.into_inner().map_err(|e| snap_err(ErrorVerb::Write, e))?;
            f.sync_all().map_err(|e| snap_err(ErrorVerb::Write, e))?;
            // Everything applied so far becomes durable before the log below it may be purged
            // (applies skip the WAL).
            handle.mvcc.flush().map_err(|e| snap_err(ErrorVerb::Write, e))?;
            let id = match &applied {
                Some(l) => format!("{}-{}-{}-{seq}", l.leader_id.term, l.leader_id.node_id, l.index),
                None => format!("0-0-0-{seq}"),
            };
            let path = dir.join(format!("{id}.snap"));
            std::fs::rename(&tmp, &path).map_err(|e| snap_err(ErrorVerb::Write, e))?;
            let meta = SnapshotMeta { last_log_id: applied, last_membership: membership, snapshot_id: id };
            // Opened first: if a newer snapshot was installed meanwhile, the file is unlinked but
            // this handle still reads it.
            let file = std::fs::File::open(&path).map_err(|e| snap_err(ErrorVerb::Read, e))?;
            this.save_current_snapshot(&meta, &path)?;
            Ok(Snapshot { meta, snapshot: Box::new(tokio::fs::File::from_std(file)) })
        })
        .await
        .map_err(|e| snap_err(ErrorVerb::Write, e))?
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok(self.shared.applied())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let shared = self.shared.clone();
        let t = Instant::now();
        // Inline on the state machine task: applying is CPU work on memtables (no WAL, no fsync),
        // tens of microseconds per entry; block_in_place's thread hand-off cost more than that.
        let (responses, events) = (|| -> Result<_, StorageError> {
            let handle = shared.mvcc();
            let m = &handle.mvcc;
            let mut responses = Vec::with_capacity(entries.len());
            let mut events: Vec<RevisionEvents> = Vec::new();
            let (_, mut membership) = shared.applied();
            let mut last = None;
            let want_prev = WantPrev::In(shared.prev_kv_ranges.current());
            for e in entries {
                let mut b = m.begin();
                b.want_prev_kv(want_prev.clone());
                let resp = match &e.payload {
                    EntryPayload::Blank => Response { revision: m.current_revision(), result: Ok(CommandResult::Noop) },
                    EntryPayload::Normal(cmd) => m.apply(&mut b, cmd).map_err(|e| sm_err(ErrorVerb::Write, e))?,
                    EntryPayload::Membership(mem) => {
                        membership = StoredMembership::new(Some(e.log_id), mem.clone());
                        b.put_meta(META_MEMBERSHIP, bincode::serialize(&membership).map_err(|e| sm_err(ErrorVerb::Write, e))?);
                        Response { revision: m.current_revision(), result: Ok(CommandResult::Noop) }
                    }
                };
                b.put_meta(META_APPLIED, bincode::serialize(&Some(e.log_id)).map_err(|e| sm_err(ErrorVerb::Write, e))?);
                events.extend(m.commit(b).map_err(|e| sm_err(ErrorVerb::Write, e))?);
                responses.push(resp);
                last = Some(e.log_id);
            }
            if last.is_some() {
                *shared.applied.lock().unwrap_or_else(|e| e.into_inner()) = (last, membership);
            }
            shared.metrics.revision.set(m.current_revision());
            shared.metrics.compact_revision.set(m.compact_revision());
            Ok((responses, events))
        })()?;
        self.shared.metrics.apply_seconds.observe(t.elapsed().as_secs_f64());
        if !events.is_empty() {
            // No receivers is fine: nobody is watching.
            let _ = self.shared.hub.send(HubMsg::Events(Arc::new(events)));
        }
        self.shared.publish_revision();
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let seq = self.shared.snap_seq.fetch_add(1, Ordering::SeqCst);
        let path = self.snapshots_dir().join(format!("recv-{}-{seq}.tmp", std::process::id()));
        // Readable too: install_snapshot reads the snapshot back through this handle.
        let f = tokio::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).await.map_err(|e| snap_err(ErrorVerb::Write, e))?;
        *self.shared.receiving.lock().unwrap_or_else(|e| e.into_inner()) = Some(path);
        Ok(Box::new(f))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, mut snapshot: Box<tokio::fs::File>) -> Result<(), StorageError> {
        use tokio::io::AsyncWriteExt;
        snapshot.flush().await.map_err(|e| snap_err(ErrorVerb::Write, e))?;
        snapshot.sync_all().await.map_err(|e| snap_err(ErrorVerb::Write, e))?;
        // The data is read from the handle openraft passes: normally the file
        // begin_receiving_snapshot created, but openraft allows any file with the snapshot.
        let mut file = snapshot.into_std().await;
        let recv = self.shared.receiving.lock().unwrap_or_else(|e| e.into_inner()).take();
        let this = self.clone();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || -> Result<(), StorageError> {
            let shared = &this.shared;
            let gen = shared.generation.load(Ordering::SeqCst) + 1;
            let name = format!("sm-{gen}");
            let dir = shared.data_dir.join(&name);
            let _ = std::fs::remove_dir_all(&dir);
            let path = this.snapshots_dir().join(format!("{}.snap", meta.snapshot_id));
            // Everything before the switch below can fail without a trace: the new directory and
            // the received file are removed.
            let prepared = (|| -> Result<Mvcc, StorageError> {
                let mvcc = Mvcc::open(&dir).map_err(|e| snap_err(ErrorVerb::Write, e))?;
                file.seek(SeekFrom::Start(0)).map_err(|e| snap_err(ErrorVerb::Read, e))?;
                load_snapshot(&mvcc, &mut file).map_err(|e| snap_err(ErrorVerb::Read, e))?;
                let cf = mvcc.db().cf_handle(CF_META).expect("meta cf");
                let mut wo = WriteOptions::default();
                wo.set_sync(true);
                let mut b = WriteBatch::default();
                b.put_cf(cf, META_APPLIED, bincode::serialize(&meta.last_log_id).map_err(|e| snap_err(ErrorVerb::Write, e))?);
                b.put_cf(cf, META_MEMBERSHIP, bincode::serialize(&meta.last_membership).map_err(|e| snap_err(ErrorVerb::Write, e))?);
                mvcc.db().write_opt(b, &wo).map_err(|e| snap_err(ErrorVerb::Write, e))?;
                mvcc.flush().map_err(|e| snap_err(ErrorVerb::Write, e))?;
                // Reload counters written by the snapshot.
                let db = mvcc.db().clone();
                drop(mvcc);
                let mvcc = Mvcc::from_db(db).map_err(|e| snap_err(ErrorVerb::Read, e))?;
                // The file becomes this replica's current snapshot (served to others) once
                // recorded below: the received file is renamed; a handle to any other file is
                // copied. A crash before the record leaves a .snap file the next record removes.
                match recv.as_ref().filter(|r| same_file(&file, r)) {
                    Some(r) => std::fs::rename(r, &path).map_err(|e| snap_err(ErrorVerb::Write, e))?,
                    None => copy_snapshot(&mut file, &path).map_err(|e| snap_err(ErrorVerb::Write, e))?,
                }
                Ok(mvcc)
            })();
            if let Some(r) = &recv {
                // Renamed already, or not the file installed.
                let _ = std::fs::remove_file(r);
            }
            let mvcc = match prepared {
                Ok(m) => m,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(e);
                }
            };
            write_atomic(&shared.data_dir.join("sm.current"), name.as_bytes()).map_err(|e| snap_err(ErrorVerb::Write, e))?;
            let new = Arc::new(SmHandle { mvcc, dir, retired: false.into() });
            let old = {
                let mut cur = shared.current.write().unwrap_or_else(|e| e.into_inner());
                std::mem::replace(&mut *cur, new)
            };
            old.retired.store(true, Ordering::SeqCst);
            shared.generation.store(gen, Ordering::SeqCst);
            *shared.applied.lock().unwrap_or_else(|e| e.into_inner()) = (meta.last_log_id, meta.last_membership.clone());
            this.save_current_snapshot(&meta, &path)?;
            shared.metrics.snapshots_installed.inc();
            Ok(())
        })
        .await
        .map_err(|e| snap_err(ErrorVerb::Write, e))??;
        let _ = self.shared.hub.send(HubMsg::Reset);
        self.shared.publish_revision();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let dir = self.snapshots_dir();
        let bytes = match std::fs::read(dir.join("current.json")) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(snap_err(ErrorVerb::Read, e)),
        };
        let rec: StoredSnapshotMeta = serde_json::from_slice(&bytes).map_err(|e| snap_err(ErrorVerb::Read, e))?;
        let f = match tokio::fs::File::open(dir.join(&rec.file)).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(snap_err(ErrorVerb::Read, e)),
        };
        Ok(Some(Snapshot { meta: rec.meta, snapshot: Box::new(f) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::ALL_CFS;
    use crate::types::{Op, PutRequest, RangeRequest, TxnRequest};

    /// Rewrites a snapshot with a record in the dropped `cur` family (tag 0), as snapshots
    /// taken before the in-memory index had, with padding and digest recomputed.
    fn with_legacy_cur_record(snap: &[u8]) -> Vec<u8> {
        let mut body = snap[..8].to_vec();
        let (k, v) = (b"a".as_slice(), b"stale copy".as_slice());
        body.push(0);
        body.extend_from_slice(&(k.len() as u32).to_le_bytes());
        body.extend_from_slice(&(v.len() as u32).to_le_bytes());
        body.extend_from_slice(k);
        body.extend_from_slice(v);
        let mut pos = 8;
        while snap[pos] != 0xFF {
            let kl = u32::from_le_bytes(snap[pos + 1..pos + 5].try_into().unwrap()) as usize;
            let vl = u32::from_le_bytes(snap[pos + 5..pos + 9].try_into().unwrap()) as usize;
            body.extend_from_slice(&snap[pos..pos + 9 + kl + vl]);
            pos += 9 + kl + vl;
        }
        body.push(0xFF);
        body.resize(body.len().div_ceil(512) * 512, 0);
        let digest = Sha256::digest(&body);
        body.extend_from_slice(&digest);
        body
    }

    #[test]
    fn a_snapshot_with_the_old_cur_family_restores() {
        let src = tempfile::tempdir().unwrap();
        let m = Mvcc::open(src.path()).unwrap();
        let put = |k: &str, v: &str| {
            let mut b = m.begin();
            let cmd = Command::Txn(TxnRequest { success: vec![Op::Put(PutRequest { key: k.into(), value: v.into(), ..Default::default() })], ..Default::default() });
            m.apply(&mut b, &cmd).unwrap();
            m.commit(b).unwrap();
        };
        put("a", "1");
        put("a", "2");
        put("b", "3");
        let mut snap = Vec::new();
        write_snapshot(&m, &mut snap).unwrap();
        assert!(!snap[8..].starts_with(&[0]), "the dropped family is not written");
        let file = src.path().join("old.snap");
        std::fs::write(&file, with_legacy_cur_record(&snap)).unwrap();

        let dst = tempfile::tempdir().unwrap();
        StateMachine::restore_from_file(dst.path(), &file).unwrap();
        let sm = StateMachine::open(dst.path(), Arc::new(Metrics::default())).unwrap();
        let h = sm.shared.mvcc();
        assert_eq!(h.mvcc.current_revision(), 4);
        let r = h.mvcc.range(&RangeRequest { key: vec![0], range_end: vec![0], ..Default::default() }).unwrap().unwrap();
        let got: Vec<(Vec<u8>, Vec<u8>, i64)> = r.kvs.into_iter().map(|kv| (kv.key, kv.value, kv.version)).collect();
        assert_eq!(got, vec![(b"a".to_vec(), b"2".to_vec(), 2), (b"b".to_vec(), b"3".to_vec(), 1)]);
        assert_eq!(ALL_CFS.len() + 1, SNAPSHOT_CFS.len());
    }

    #[test]
    fn a_snapshot_of_a_newer_store_format_is_refused_by_restore() {
        let src = tempfile::tempdir().unwrap();
        let m = Mvcc::open(src.path()).unwrap();
        m.db().put_cf(m.db().cf_handle(CF_META).unwrap(), b"format", (crate::mvcc::STORE_FORMAT + 1).to_be_bytes()).unwrap();
        let file = src.path().join("newer.snap");
        let mut f = std::fs::File::create(&file).unwrap();
        write_snapshot(&m, &mut f).unwrap();
        drop(f);
        let dst = tempfile::tempdir().unwrap();
        let e = StateMachine::restore_from_file(dst.path(), &file).unwrap_err();
        assert!(e.to_string().contains("newer kuberaft"), "{e}");
        assert!(!dst.path().join("sm-1").exists(), "the refused restore left its directory");
        assert!(!dst.path().join("sm.current").exists());
    }
}
