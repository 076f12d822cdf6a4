//! Kubernetes watch over raftstore's watch: newline-delimited JSON events, resumed strictly
//! after the given resourceVersion, filtered by namespace (the key range), label and field
//! selectors. An object that stops matching is sent as DELETED and one that starts matching as
//! ADDED. A revision below the compaction point ends the stream with a 410 ERROR event.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use raftstore::types::{Event, EventKind, KeyValue};
use raftstore::watch::{WatchOut, WatchSpec};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::error::{ApiError, ApiResult};
use crate::request::{Reply, Request};
use crate::rest::Target;
use crate::decoded::Fifo;
use crate::store::{collection_range, Freshness};
use crate::Api;

/// How often bookmarks go out when asked for.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(30);

struct Encoder {
    res: std::sync::Arc<crate::catalog::ResourceDef>,
    kind: String,
    api_version: String,
    table: bool,
    /// PartialObjectMetadata events (a metadata informer).
    metadata: bool,
    include_object: String,
    headers_sent: bool,
}

/// Every watcher of a resource receives the same stored versions: each event line is encoded
/// once per process rather than once per watcher (the objects are decoded once, see decoded.rs).
fn lines() -> MutexGuard<'static, Fifo<(Vec<u8>, i64, &'static str, bool), Bytes>> {
    static LINES: OnceLock<Mutex<Fifo<(Vec<u8>, i64, &'static str, bool), Bytes>>> = OnceLock::new();
    LINES.get_or_init(|| Mutex::new(Fifo::new())).lock().unwrap_or_else(|p| p.into_inner())
}

/// The stored version `kv` as stored, without its resourceVersion (None if it is not JSON).
fn decoded(kv: &KeyValue) -> Option<Arc<Value>> {
    crate::decoded::object(kv).ok()
}

impl Encoder {
    /// The event line for `obj` (as stored), the version of `key` stamped with `rev`: encoded
    /// once for all plain watchers, and once for all metadata watchers (Table watchers differ
    /// per watcher).
    fn shared_event(&mut self, ty: &'static str, key: &[u8], rev: i64, obj: &Value) -> Bytes {
        if self.table {
            return self.event(ty, obj, Some(rev));
        }
        let id = (key.to_vec(), rev, ty, self.metadata);
        if let Some(b) = lines().get(&id) {
            return b;
        }
        let b = self.event(ty, obj, Some(rev));
        let evicted = lines().insert(id, b.clone());
        drop(evicted);
        b
    }

    /// The event line for `obj`, with resourceVersion `rv` (None: `obj` has its own).
    fn event(&mut self, ty: &str, obj: &Value, rv: Option<i64>) -> Bytes {
        /// Borrows the object: the line is written without copying it first.
        #[derive(serde::Serialize)]
        struct Line<'a, T: serde::Serialize> {
            #[serde(rename = "type")]
            ty: &'a str,
            object: T,
        }
        if self.table {
            let mut obj = obj.clone();
            if let Some(rv) = rv {
                crate::store::set_rv(&mut obj, rv);
            }
            let rv = obj["metadata"]["resourceVersion"].as_str().unwrap_or("").to_string();
            let t = crate::rest::table_of(&self.res, std::slice::from_ref(&obj), &rv, None, &self.include_object, !self.headers_sent);
            self.headers_sent = true;
            return line(&Line { ty, object: &t });
        }
        if self.metadata {
            return line(&Line { ty, object: crate::decoded::Partial { obj, rv } });
        }
        line(&Line { ty, object: crate::decoded::WithRv { obj, rv } })
    }

    fn bookmark(&self, rev: i64) -> Bytes {
        let (kind, api_version) = if self.metadata { ("PartialObjectMetadata", "meta.k8s.io/v1") } else { (self.kind.as_str(), self.api_version.as_str()) };
        line(&json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": rev.to_string()}}}))
    }
}

fn line(v: &impl serde::Serialize) -> Bytes {
    let mut s = serde_json::to_vec(v).unwrap_or_default();
    s.push(b'\n');
    Bytes::from(s)
}

fn error_event(e: &ApiError) -> Bytes {
    line(&json!({"type": "ERROR", "object": e.status()}))
}

impl Api {
    pub async fn watch(&self, req: &Request, t: &Target) -> ApiResult<Reply> {
        let (ls, fs) = self.filter(req, &t.res)?;
        if let Some(name) = &t.name {
            // GET .../pods/NAME?watch=true (legacy form): the same as a name field selector.
            let _ = name;
        }
        if req.query.get("sendInitialEvents").is_some() || req.query.get("resourceVersionMatch").is_some() {
            return Err(ApiError::invalid(
                "ListOptions",
                "meta.k8s.io",
                "",
                vec![crate::error::Cause::forbidden("sendInitialEvents", "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled")],
            ));
        }
        let rv = req.query.get("resourceVersion").unwrap_or("").to_string();
        // At most a day: a larger value overflows deadlines and means "forever" anyway.
        let timeout = req.query.int("timeoutSeconds")?.filter(|s| *s > 0).map(|s| Duration::from_secs(s.min(86_400) as u64));
        let bookmarks = req.query.flag("allowWatchBookmarks");
        let mut enc = Encoder {
            res: t.res.clone(),
            kind: t.res.kind.clone(),
            api_version: t.res.api_version(),
            table: req.wants_table(),
            metadata: req.wants_metadata() && !req.wants_table(),
            include_object: req.query.get("includeObject").unwrap_or("Metadata").to_string(),
            headers_sent: false,
        };
        let (start, end) = collection_range(&t.res, t.ns.as_deref());
        let name_filter = t.name.clone();
        // Without selectors every stored version matches, and a put needs no look at the
        // version it replaced (which may be long out of the decoded cache: a Lease renewed
        // every ten seconds, say).
        let selective = !ls.is_empty() || !fs.is_empty() || name_filter.is_some();
        let matches = move |v: &Value| ls.matches_object(v) && fs.matches(v) && name_filter.as_deref().map(|n| v["metadata"]["name"].as_str() == Some(n)).unwrap_or(true);

        // Initial state for RV "" or "0": synthetic ADDED events, then changes after it.
        let mut initial = Vec::new();
        let from_rev = match rv.as_str() {
            "" | "0" => {
                let fresh = if rv.is_empty() { Freshness::Latest } else { Freshness::Any };
                let page = self.store.list(&start, &end, fresh, 0, &|v: &Value| matches(v)).await?;
                initial = page.items.into_iter().map(|(v, _)| v).collect();
                page.revision
            }
            s => s.parse::<i64>().ok().filter(|v| (0..i64::MAX).contains(v)).ok_or_else(|| ApiError::BadRequest(format!("invalid resource version: {s:?}")))?,
        };

        let (tx, rx) = mpsc::channel::<Bytes>(64);
        let (out_tx, mut out_rx) = mpsc::channel::<WatchOut>(64);
        let mut ws = self.store.replica.watch_stream(out_tx);
        let spec = WatchSpec { key: start, range_end: end, start_revision: from_rev + 1, prev_kv: true, progress_notify: bookmarks, ..Default::default() };
        ws.create(spec).await.map_err(|e| ApiError::Internal(format!("watch: {e}")))?;
        let metrics = self.metrics.clone();
        metrics.watches.inc();
        tokio::spawn(async move {
            let _guard = scopeguard(metrics);
            for obj in &initial {
                if tx.send(enc.event("ADDED", obj, None)).await.is_err() {
                    return;
                }
            }
            let deadline = timeout.map(|d| tokio::time::Instant::now() + d);
            let mut tick = tokio::time::interval(BOOKMARK_INTERVAL);
            tick.tick().await;
            let mut last_rev = from_rev;
            loop {
                let sleep = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => futures::future::pending().await,
                    }
                };
                tokio::select! {
                    h = ws.recv_hub() => {
                        if ws.on_hub(h).await.is_err() {
                            return;
                        }
                    }
                    o = out_rx.recv() => {
                        let Some(o) = o else { return };
                        match o {
                            WatchOut::Events { events, revision, .. } => {
                                for e in &events {
                                    if let Some(b) = convert(&mut enc, e, selective, &matches) {
                                        if tx.send(b).await.is_err() {
                                            return;
                                        }
                                    }
                                }
                                last_rev = last_rev.max(revision);
                            }
                            WatchOut::Canceled { compact_revision, .. } if compact_revision > 0 => {
                                let e = ApiError::Gone(format!("too old resource version: {from_rev} ({compact_revision})"));
                                let _ = tx.send(error_event(&e)).await;
                                return;
                            }
                            WatchOut::CreateFailed { reason, .. } => {
                                let _ = tx.send(error_event(&ApiError::Internal(reason))).await;
                                return;
                            }
                            WatchOut::Canceled { .. } => return,
                            WatchOut::Progress { revision, .. } => {
                                if bookmarks && revision > last_rev {
                                    last_rev = revision;
                                    if tx.send(enc.bookmark(revision)).await.is_err() {
                                        return;
                                    }
                                }
                            }
                            WatchOut::Created { .. } => {}
                        }
                    }
                    _ = tick.tick(), if bookmarks => {
                        if ws.notify_progress().await.is_err() {
                            return;
                        }
                    }
                    _ = tx.closed() => return,
                    _ = sleep => return,
                }
            }
        });
        Ok(Reply::Stream { content_type: "application/json", rx })
    }
}

/// Decrements the watch gauge when the stream task ends, however it ends.
struct WatchGuard(std::sync::Arc<crate::metrics::ApiMetrics>);
impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.watches.dec();
    }
}
fn scopeguard(m: std::sync::Arc<crate::metrics::ApiMetrics>) -> WatchGuard {
    WatchGuard(m)
}

/// One store event as a Kubernetes watch event (or nothing, if it does not concern this watch).
/// `selective`: whether `matches` can be false at all (a watch with selectors).
fn convert(enc: &mut Encoder, e: &Event, selective: bool, matches: &impl Fn(&Value) -> bool) -> Option<Bytes> {
    let prev = || e.prev_kv.as_ref().and_then(decoded);
    match e.kind {
        EventKind::Put => {
            // A put of a key that existed has version > 1 (the store may leave prev_kv out when
            // compaction removed the version it replaced before the event was sent).
            let was = if selective { prev().as_deref().map(matches).unwrap_or(false) } else { e.kv.version > 1 };
            let cur = decoded(&e.kv)?;
            let is = matches(&cur);
            let ty = match (was, is) {
                (false, true) => "ADDED",
                (true, true) => "MODIFIED",
                (true, false) => "DELETED",
                (false, false) => return None,
            };
            Some(enc.shared_event(ty, &e.kv.key, e.kv.mod_revision, &cur))
        }
        EventKind::Delete => {
            let prev = prev()?;
            if !matches(&prev) {
                return None;
            }
            // The last version, stamped with the deleting revision.
            Some(enc.shared_event("DELETED", &e.kv.key, e.kv.mod_revision, &prev))
        }
    }
}
