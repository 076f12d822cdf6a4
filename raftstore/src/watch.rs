//! Watch streams served from this replica's applied state.
//!
//! A stream subscribes to the apply path's broadcast before it reads anything, so every revision
//! after its first read reaches it either from storage (catch-up) or from the broadcast. Each
//! watcher keeps `next_rev`, the first revision it has not seen: broadcast revisions below it are
//! skipped, a jump past it is filled from storage first. A lagging receiver or a snapshot install
//! falls back to storage, which fails with "compacted" rather than skip anything. So each watcher
//! gets every event after its start revision exactly once, in order.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};

use crate::mvcc::{in_range, MvccError, RevisionEvents};
use crate::state_machine::{HubMsg, SmShared};
use crate::types::*;

/// Events per response when replaying history.
const CATCH_UP_CHUNK: usize = 1000;

#[derive(Clone, Debug, Default)]
pub struct WatchSpec {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    /// 0 means "from now".
    pub start_revision: Revision,
    pub prev_kv: bool,
    pub filter_put: bool,
    pub filter_delete: bool,
    pub progress_notify: bool,
    /// Client-chosen id; 0 lets the stream pick one.
    pub watch_id: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum WatchOut {
    Created { watch_id: i64, revision: Revision },
    CreateFailed { watch_id: i64, reason: String, revision: Revision },
    Events { watch_id: i64, revision: Revision, events: Vec<Event> },
    Canceled { watch_id: i64, revision: Revision, compact_revision: Revision, reason: String },
    /// Every event at or below `revision` has been sent on this stream. watch_id is -1 when it
    /// answers a progress request for the whole stream.
    Progress { watch_id: i64, revision: Revision },
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("storage: {0}")]
    Storage(#[from] MvccError),
    #[error("watch stream closed")]
    Closed,
}

struct Watcher {
    spec: WatchSpec,
    next_rev: Revision,
}

impl Watcher {
    fn select(&self, events: &[Event]) -> Vec<Event> {
        events
            .iter()
            .filter(|e| in_range(&e.kv.key, &self.spec.key, &self.spec.range_end))
            .filter(|e| !(self.spec.filter_put && e.kind == EventKind::Put))
            .filter(|e| !(self.spec.filter_delete && e.kind == EventKind::Delete))
            .map(|e| {
                let mut e = e.clone();
                if !self.spec.prev_kv {
                    e.prev_kv = None;
                }
                e
            })
            .collect()
    }
}

pub struct WatchStream {
    sm: Arc<SmShared>,
    rx: broadcast::Receiver<HubMsg>,
    watchers: BTreeMap<i64, Watcher>,
    next_auto_id: i64,
    out: mpsc::Sender<WatchOut>,
}

impl WatchStream {
    pub fn new(sm: Arc<SmShared>, out: mpsc::Sender<WatchOut>) -> WatchStream {
        let rx = sm.subscribe();
        WatchStream { sm, rx, watchers: BTreeMap::new(), next_auto_id: 0, out }
    }

    async fn send(&self, o: WatchOut) -> Result<(), WatchError> {
        self.out.send(o).await.map_err(|_| WatchError::Closed)
    }

    pub fn watcher_count(&self) -> usize {
        self.watchers.len()
    }

    pub async fn create(&mut self, spec: WatchSpec) -> Result<(), WatchError> {
        let current = self.sm.mvcc().mvcc.current_revision();
        let id = if spec.watch_id != 0 {
            if self.watchers.contains_key(&spec.watch_id) {
                return self
                    .send(WatchOut::CreateFailed { watch_id: spec.watch_id, reason: "mvcc: duplicate watch ID provided on the WatchStream".into(), revision: current })
                    .await;
            }
            spec.watch_id
        } else {
            while self.watchers.contains_key(&self.next_auto_id) {
                self.next_auto_id += 1;
            }
            self.next_auto_id
        };
        let next_rev = if spec.start_revision <= 0 { current + 1 } else { spec.start_revision };
        if spec.prev_kv {
            self.sm.prev_kv_ranges.add(&spec.key, &spec.range_end);
        }
        self.watchers.insert(id, Watcher { spec, next_rev });
        self.sm.metrics.watchers.inc();
        self.send(WatchOut::Created { watch_id: id, revision: current }).await?;
        if next_rev <= current {
            self.catch_up(id, current).await?;
        }
        Ok(())
    }

    /// Removes watcher `id`, if there is one, from this stream and the counts.
    fn forget(&mut self, id: i64) -> bool {
        let Some(w) = self.watchers.remove(&id) else { return false };
        self.sm.metrics.watchers.dec();
        if w.spec.prev_kv {
            self.sm.prev_kv_ranges.remove(&w.spec.key, &w.spec.range_end);
        }
        true
    }

    pub async fn cancel(&mut self, id: i64) -> Result<(), WatchError> {
        if self.forget(id) {
            let rev = self.sm.mvcc().mvcc.current_revision();
            self.send(WatchOut::Canceled { watch_id: id, revision: rev, compact_revision: 0, reason: String::new() }).await?;
        }
        Ok(())
    }

    /// Answers a progress request: the highest revision every watcher has been sent.
    pub async fn progress(&mut self) -> Result<(), WatchError> {
        let current = self.sm.mvcc().mvcc.current_revision();
        // A watcher that starts in the future has seen nothing beyond the store's revision.
        let rev = self.watchers.values().map(|w| w.next_rev - 1).min().unwrap_or(current).min(current);
        self.send(WatchOut::Progress { watch_id: -1, revision: rev }).await
    }

    /// Periodic progress for watchers that asked for it.
    pub async fn notify_progress(&mut self) -> Result<(), WatchError> {
        let current = self.sm.mvcc().mvcc.current_revision();
        let outs: Vec<WatchOut> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.spec.progress_notify)
            .map(|(id, w)| WatchOut::Progress { watch_id: *id, revision: (w.next_rev - 1).min(current) })
            .collect();
        for o in outs {
            self.send(o).await?;
        }
        Ok(())
    }

    /// Replays watcher `id` from storage up to `upto` (inclusive), or cancels it as compacted.
    async fn catch_up(&mut self, id: i64, upto: Revision) -> Result<(), WatchError> {
        loop {
            let Some(w) = self.watchers.get(&id) else { return Ok(()) };
            if w.next_rev > upto {
                return Ok(());
            }
            let from = w.next_rev;
            let handle = self.sm.mvcc();
            self.sm.metrics.watch_storage_reads.inc();
            let hist = tokio::task::block_in_place(|| handle.mvcc.history(from, upto, CATCH_UP_CHUNK))?;
            drop(handle);
            let batch = match hist {
                Ok(b) => b,
                Err(ApplyError::Compacted { compact_revision }) => {
                    self.forget(id);
                    return self
                        .send(WatchOut::Canceled {
                            watch_id: id,
                            revision: upto,
                            compact_revision,
                            reason: "mvcc: required revision has been compacted".into(),
                        })
                        .await;
                }
                Err(e) => return Err(WatchError::Storage(MvccError::Corrupt { cf: "rev", detail: e.to_string() })),
            };
            let Some(last) = batch.last().map(|r| r.revision) else {
                // Nothing stored in [from, upto]: revisions without events for anyone.
                if let Some(w) = self.watchers.get_mut(&id) {
                    w.next_rev = upto + 1;
                }
                return Ok(());
            };
            self.deliver(id, &batch).await?;
            if let Some(w) = self.watchers.get_mut(&id) {
                w.next_rev = last + 1;
            }
        }
    }

    async fn deliver(&mut self, id: i64, batch: &[RevisionEvents]) -> Result<(), WatchError> {
        let Some(w) = self.watchers.get(&id) else { return Ok(()) };
        let mut events = Vec::new();
        let mut last = 0;
        for r in batch {
            if r.revision < w.next_rev {
                continue;
            }
            events.extend(w.select(&r.events));
            last = r.revision;
        }
        if w.spec.prev_kv {
            // Puts applied while nobody wanted previous values do not carry them (a put of a
            // key that existed has version > 1): read them now, as etcd does for every event.
            let mut handle = None;
            for e in events.iter_mut().filter(|e| e.kind == EventKind::Put && e.prev_kv.is_none() && e.kv.version > 1) {
                let h = handle.get_or_insert_with(|| self.sm.mvcc());
                e.prev_kv = h.mvcc.prev_version_of(&e.kv)?;
            }
        }
        if !events.is_empty() {
            self.send(WatchOut::Events { watch_id: id, revision: last, events }).await?;
        }
        Ok(())
    }

    /// Waits for the next applied batch (or a reset). Cancel-safe: use it in `select!` and pass
    /// the result to [`WatchStream::on_hub`].
    pub async fn recv_hub(&mut self) -> Result<HubMsg, broadcast::error::RecvError> {
        self.rx.recv().await
    }

    /// Forwards an applied batch (or a reset) to the watchers.
    pub async fn on_hub(&mut self, msg: Result<HubMsg, broadcast::error::RecvError>) -> Result<(), WatchError> {
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        let lagged = matches!(msg, Err(broadcast::error::RecvError::Lagged(_)));
        match msg {
            Ok(HubMsg::Events(batch)) => {
                let (Some(first), Some(last)) = (batch.first().map(|r| r.revision), batch.last().map(|r| r.revision)) else {
                    return Ok(());
                };
                for id in ids {
                    let Some(w) = self.watchers.get(&id) else { continue };
                    if w.next_rev > last {
                        continue;
                    }
                    if w.next_rev < first {
                        // A gap (this watcher started before revisions we never received).
                        self.catch_up(id, first - 1).await?;
                    }
                    self.deliver(id, &batch).await?;
                    if let Some(w) = self.watchers.get_mut(&id) {
                        w.next_rev = w.next_rev.max(last + 1);
                    }
                }
            }
            Ok(HubMsg::Reset) | Err(broadcast::error::RecvError::Lagged(_)) => {
                if lagged {
                    self.sm.metrics.watch_lagged.inc();
                }
                // Re-read from storage; anything older than its compaction point cancels.
                let current = self.sm.mvcc().mvcc.current_revision();
                for id in ids {
                    self.catch_up(id, current).await?;
                }
            }
            Err(broadcast::error::RecvError::Closed) => return Err(WatchError::Closed),
        }
        Ok(())
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            self.forget(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::state_machine::StateMachine;
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload, RaftSnapshotBuilder};

    fn put(i: u64) -> Entry {
        let cmd = Command::Txn(TxnRequest {
            success: vec![Op::Put(PutRequest { key: format!("k{:03}", i % 7).into_bytes(), value: format!("v{i}").into_bytes(), ..Default::default() })],
            ..Default::default()
        });
        Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), i), payload: EntryPayload::Normal(cmd) }
    }

    /// Builds a snapshot of `from` and installs it on `to`, as openraft does between replicas.
    async fn ship_snapshot(from: &mut StateMachine, to: &mut StateMachine) {
        let snap = from.build_snapshot().await.unwrap();
        let mut src = snap.snapshot;
        let mut dst = to.begin_receiving_snapshot().await.unwrap();
        tokio::io::copy(&mut *src, &mut *dst).await.unwrap();
        to.install_snapshot(&snap.meta, dst).await.unwrap();
    }

    async fn next_events(rx: &mut mpsc::Receiver<WatchOut>, ws: &mut WatchStream, want: usize) -> Vec<(Revision, Vec<u8>)> {
        let mut got = Vec::new();
        while got.len() < want {
            tokio::select! {
                o = rx.recv() => match o.expect("stream open") {
                    WatchOut::Events { events, .. } => got.extend(events.into_iter().map(|e| (e.kv.mod_revision, e.kv.value))),
                    WatchOut::Canceled { reason, .. } => panic!("canceled: {reason}"),
                    _ => {}
                },
                h = ws.recv_hub() => ws.on_hub(h).await.unwrap(),
            }
        }
        got
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watcher_on_a_replica_that_installs_a_snapshot_neither_skips_nor_repeats() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut a = StateMachine::open(da.path(), Arc::new(Metrics::default())).unwrap();
        let mut b = StateMachine::open(db.path(), Arc::new(Metrics::default())).unwrap();
        // The leader's state machine is at entry 40; the lagging one at 10.
        a.apply((1..=40).map(put).collect::<Vec<_>>()).await.unwrap();
        b.apply((1..=10).map(put).collect::<Vec<_>>()).await.unwrap();
        let (tx, mut rx) = mpsc::channel(1024);
        let mut ws = WatchStream::new(b.shared.clone(), tx);
        ws.create(WatchSpec { key: b"k".to_vec(), range_end: b"l".to_vec(), start_revision: 2, ..Default::default() }).await.unwrap();
        let first = next_events(&mut rx, &mut ws, 10).await;
        assert_eq!(first.iter().map(|e| e.0).collect::<Vec<_>>(), (2..=11).collect::<Vec<_>>());

        ship_snapshot(&mut a, &mut b).await;
        assert_eq!(b.shared.mvcc().mvcc.current_revision(), 41);

        // Then the log continues on `b`.
        b.apply((41..=45).map(put).collect::<Vec<_>>()).await.unwrap();
        let rest = next_events(&mut rx, &mut ws, 35).await;
        let revs: Vec<Revision> = rest.iter().map(|e| e.0).collect();
        assert_eq!(revs, (12..=46).collect::<Vec<_>>(), "every revision after the first batch exactly once");
        assert_eq!(rest.last().unwrap().1, b"v45".to_vec());

        // A progress request reports everything delivered.
        ws.progress().await.unwrap();
        match rx.recv().await.unwrap() {
            WatchOut::Progress { watch_id, revision } => assert_eq!((watch_id, revision), (-1, 46)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prev_kv_watchers_get_previous_values_even_of_puts_applied_without_them() {
        let d = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(d.path(), Arc::new(Metrics::default())).unwrap();
        sm.apply((1..=7).map(put).collect::<Vec<_>>()).await.unwrap();
        let shared = sm.shared.clone();
        let ranges = || shared.prev_kv_ranges.current().as_ref().clone();
        let k = (b"k".to_vec(), b"l".to_vec());
        let (tx, mut rx) = mpsc::channel(1024);
        let mut ws = WatchStream::new(sm.shared.clone(), tx);
        ws.create(WatchSpec { key: b"k".to_vec(), range_end: b"l".to_vec(), prev_kv: true, ..Default::default() }).await.unwrap();
        ws.create(WatchSpec { key: b"k".to_vec(), range_end: b"l".to_vec(), ..Default::default() }).await.unwrap();
        assert_eq!(ranges(), vec![k.clone()], "only the watcher that asked for previous values counts");
        // An apply that read the ranges before this watcher was counted leaves previous values
        // out of its put events (simulated by hiding the watcher's range).
        sm.shared.prev_kv_ranges.remove(&k.0, &k.1);
        sm.apply((8..=10).map(put).collect::<Vec<_>>()).await.unwrap();
        sm.shared.prev_kv_ranges.add(&k.0, &k.1);
        let mut got = BTreeMap::new();
        while got.len() < 2 {
            tokio::select! {
                o = rx.recv() => if let WatchOut::Events { watch_id, events, .. } = o.expect("stream open") {
                    got.insert(watch_id, events.into_iter().map(|e| e.prev_kv.map(|p| p.value)).collect::<Vec<_>>());
                },
                h = ws.recv_hub() => ws.on_hub(h).await.unwrap(),
            }
        }
        // Entries 8, 9, 10 overwrite k001, k002, k003, written by entries 1, 2, 3.
        assert_eq!(got[&0], vec![Some(b"v1".to_vec()), Some(b"v2".to_vec()), Some(b"v3".to_vec())]);
        assert_eq!(got[&1], vec![None, None, None]);
        ws.cancel(1).await.unwrap();
        assert_eq!(ranges(), vec![k.clone()]);
        drop(ws);
        assert!(ranges().is_empty(), "a closed stream's watchers no longer count");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watcher_behind_a_snapshot_with_a_newer_compaction_is_canceled_as_compacted() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut a = StateMachine::open(da.path(), Arc::new(Metrics::default())).unwrap();
        let mut b = StateMachine::open(db.path(), Arc::new(Metrics::default())).unwrap();
        a.apply((1..=30).map(put).collect::<Vec<_>>()).await.unwrap();
        let compact = Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), 31), payload: EntryPayload::Normal(Command::Compact { revision: 25 }) };
        a.apply(vec![compact]).await.unwrap();
        b.apply((1..=5).map(put).collect::<Vec<_>>()).await.unwrap();
        let (tx, mut rx) = mpsc::channel(1024);
        let mut ws = WatchStream::new(b.shared.clone(), tx);
        ws.create(WatchSpec { key: b"k".to_vec(), range_end: b"l".to_vec(), start_revision: 2, ..Default::default() }).await.unwrap();
        let _ = next_events(&mut rx, &mut ws, 5).await;
        ship_snapshot(&mut a, &mut b).await;
        let h = ws.recv_hub().await;
        ws.on_hub(h).await.unwrap();
        loop {
            match rx.recv().await.unwrap() {
                WatchOut::Canceled { compact_revision, .. } => {
                    assert_eq!(compact_revision, 25);
                    break;
                }
                WatchOut::Events { events, .. } => panic!("events past a compaction gap: {events:?}"),
                _ => {}
            }
        }
    }
}
