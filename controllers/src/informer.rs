//! Shared informers: one watch and one cache per resource for all controllers of this term,
//! like client-go's SharedInformerFactory. Pods and Nodes are watched by a dozen controllers;
//! with a watch each, every pod write was decoded a dozen times in this process and encoded,
//! encrypted and sent a dozen times by the API server.
//!
//! An [`Informer`] drives one kube-runtime watcher into a reflector [`Store`] and then tells
//! every subscriber which object changed, as the `Arc` the store holds (deleted objects as
//! their last state). The store is updated before subscribers hear of a change, so a
//! controller triggered by an event never reads an older object from the cache. A subscriber
//! that falls behind is not waited for (that would stall every controller behind the slowest);
//! it is handed the whole cache instead, which reconciles everything once, like a resync.
//!
//! kube-runtime's own shared streams (`reflect_shared`) are not used: they do not announce
//! deletions, which the ReplicaSet, Endpoints and Job controllers must see, and they apply
//! backpressure from the slowest subscriber to the watch.

use std::sync::Arc;

use futures::{stream, Stream, StreamExt};
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Resource;
use tokio::sync::broadcast;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

/// Changes a subscriber may be behind before it counts as lagging. The ring keeps the last
/// BUFFER announced versions alive (a few KiB each for pods), so it is also resident memory.
const BUFFER: usize = 4096;

pub struct Informer<K: Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    /// Changed objects, and whether the change deleted them.
    tx: broadcast::Sender<(Arc<K>, bool)>,
    /// True once the first list is in the store.
    ready: tokio::sync::watch::Receiver<bool>,
    /// The last BUFFER deletions, replayed to a subscriber that fell behind (the cache no
    /// longer shows what was deleted while it lagged).
    recent_deletions: Arc<std::sync::Mutex<std::collections::VecDeque<Arc<K>>>>,
}

/// The writing side of an informer: applies watch events to the cache, then announces them.
struct Feed<K: Resource<DynamicType = ()> + Clone + 'static> {
    writer: reflector::store::Writer<K>,
    store: Store<K>,
    tx: broadcast::Sender<(Arc<K>, bool)>,
    ready: tokio::sync::watch::Sender<bool>,
    recent_deletions: Arc<std::sync::Mutex<std::collections::VecDeque<Arc<K>>>>,
}

impl<K> Feed<K>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    fn deleted(&self, o: Arc<K>) {
        {
            let mut recent = self.recent_deletions.lock().unwrap_or_else(|p| p.into_inner());
            if recent.len() == BUFFER {
                recent.pop_front();
            }
            recent.push_back(o.clone());
        }
        let _ = self.tx.send((o, true));
    }

    fn apply(&mut self, ev: watcher::Event<K>) {
        // A relist replaces the cache on InitDone: what it drops was deleted while the watch
        // was away, and is announced as deleted.
        let before = matches!(ev, watcher::Event::InitDone).then(|| self.store.state());
        self.writer.apply_watcher_event(&ev);
        match ev {
            watcher::Event::Apply(o) => {
                if let Some(cur) = self.store.get(&ObjectRef::from_obj(&o)) {
                    let _ = self.tx.send((cur, false));
                }
            }
            watcher::Event::Delete(o) => self.deleted(Arc::new(o)),
            watcher::Event::InitDone => {
                self.ready.send_replace(true);
                for o in before.into_iter().flatten() {
                    if self.store.get(&ObjectRef::from_obj(&*o)).is_none() {
                        self.deleted(o);
                    }
                }
                // A (re)list: everything may have changed.
                for o in self.store.state() {
                    let _ = self.tx.send((o, false));
                }
            }
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
        }
    }
}

impl<K> Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    /// The informer, and the future that runs its watch (poll it for as long as it is used).
    pub fn new(api: Api<K>, cfg: watcher::Config) -> (Arc<Informer<K>>, impl std::future::Future<Output = ()> + Send + 'static) {
        let (informer, mut feed) = Informer::parts();
        let events = watcher::watcher(api, cfg).default_backoff().modify(|o| o.meta_mut().managed_fields = None);
        let run = async move {
            let mut events = std::pin::pin!(events);
            while let Some(ev) = events.next().await {
                match ev {
                    Ok(ev) => feed.apply(ev),
                    Err(e) => tracing::debug!(error = %e, "shared watch failed; retrying"),
                }
            }
        };
        (informer, run)
    }

    fn parts() -> (Arc<Informer<K>>, Feed<K>) {
        let (store, writer) = reflector::store::<K>();
        let (tx, _) = broadcast::channel(BUFFER);
        let (ready_tx, ready) = tokio::sync::watch::channel(false);
        let recent_deletions = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
        let informer = Arc::new(Informer { store: store.clone(), tx: tx.clone(), ready, recent_deletions: recent_deletions.clone() });
        (informer, Feed { writer, store, tx, ready: ready_tx, recent_deletions })
    }

    /// The cache (shared; filled once the first list completes, see [`Informer::wait_ready`]).
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Returns once the first list is in the cache. Use this, not the store's
    /// `wait_until_ready`: kube-runtime's readiness future wakes only the last task that polled
    /// it, so of two controllers waiting on a shared store one would wait forever.
    /// An error if the watch feeding the cache ended first: the cache is then incomplete, and
    /// acting on it (an empty pod list, say) would be acting on a falsehood.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let mut ready = self.ready.clone();
        let listed = ready.wait_for(|r| *r).await.is_ok();
        match listed {
            true => Ok(()),
            false => anyhow::bail!("the {} watch ended before its first list", K::kind(&()).to_lowercase()),
        }
    }

    /// Every object that changes from now on, deleted ones included (and the whole cache
    /// after the first list, or when this subscriber fell behind): for `watches`/`owns`
    /// triggers, where a deletion concerns the owner.
    pub fn subscribe(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        self.changes(true)
    }

    /// The same without deletions: for a controller's own objects (`for_shared_stream`), which
    /// it reconciles only while they exist, as kube-runtime's `Controller::new` does.
    pub fn subscribe_applied(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        self.changes(false)
    }

    fn changes(&self, deletions: bool) -> impl Stream<Item = Arc<K>> + Send + 'static {
        let store = self.store.clone();
        let recent = self.recent_deletions.clone();
        // Subscribed before looking at the flag: if the first list is not in yet, its
        // announcement comes through the channel; if it is, the cache is replayed here.
        let rx = self.tx.subscribe();
        let replay = if *self.ready.borrow() { store.state() } else { Vec::new() };
        stream::iter(replay).chain(BroadcastStream::new(rx).flat_map(move |r| match r {
            Ok((o, deleted)) => stream::iter(if deleted && !deletions { vec![] } else { vec![o] }),
            Err(BroadcastStreamRecvError::Lagged(n)) => {
                tracing::debug!(missed = n, "shared informer subscriber fell behind; resyncing it");
                let mut all = store.state();
                if deletions {
                    all.extend(recent.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned());
                }
                stream::iter(all)
            }
        }))
    }
}

/// The informers of one controller-manager term.
/// A watch task to spawn.
pub type Watch = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

pub struct Informers {
    pub pods: Arc<Informer<k8s_openapi::api::core::v1::Pod>>,
    pub nodes: Arc<Informer<k8s_openapi::api::core::v1::Node>>,
}

impl Informers {
    /// The informers, and the futures that run their watches.
    pub fn new(client: &kube::Client) -> (Informers, Vec<Watch>) {
        let (pods, pods_run) = Informer::new(Api::all(client.clone()), watcher::Config::default());
        let (nodes, nodes_run) = Informer::new(Api::all(client.clone()), watcher::Config::default());
        (Informers { pods, nodes }, vec![Box::pin(pods_run), Box::pin(nodes_run)])
    }

    /// The informers with their watches spawned on the current runtime (for running a few
    /// controllers on their own, as tests do; they stop with the runtime).
    pub fn spawn(client: &kube::Client) -> Arc<Informers> {
        let (inf, watches) = Informers::new(client);
        for w in watches {
            tokio::spawn(w);
        }
        Arc::new(inf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    fn pod(name: &str) -> Pod {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name, "namespace": "default"}})).expect("pod")
    }

    #[tokio::test]
    async fn wait_ready_fails_when_the_watch_ends_before_its_first_list() {
        let (inf, feed) = Informer::<Pod>::parts();
        drop(feed);
        let e = inf.wait_ready().await.expect_err("an empty cache is not ready");
        assert!(e.to_string().contains("pod watch ended"), "{e}");
        let (inf, mut feed) = Informer::<Pod>::parts();
        feed.apply(watcher::Event::InitDone);
        drop(feed);
        inf.wait_ready().await.expect("ready once the first list is in, even if the watch ends later");
    }

    #[tokio::test]
    async fn a_subscriber_that_comes_after_the_first_list_gets_the_cache_first() {
        let (store, mut writer) = reflector::store::<Pod>();
        let (tx, _) = broadcast::channel(16);
        let (_ready_tx, ready) = tokio::sync::watch::channel(true);
        writer.apply_watcher_event(&watcher::Event::Apply(pod("old")));
        let inf = Informer { store: store.clone(), tx: tx.clone(), ready, recent_deletions: Default::default() };
        let mut sub = Box::pin(inf.subscribe_applied());
        let _ = tx.send((Arc::new(pod("gone")), true));
        let _ = tx.send((Arc::new(pod("new")), false));
        let names: Vec<String> = (0..2).map(|_| futures::executor::block_on(sub.next()).expect("item").metadata.name.clone().expect("name")).collect();
        assert_eq!(names, vec!["old", "new"], "the cache, then changes without deletions");
    }

    #[tokio::test]
    async fn lagging_subscriber_gets_the_whole_cache() {
        let (store, mut writer) = reflector::store::<Pod>();
        let (tx, _) = broadcast::channel(2);
        let (_ready_tx, ready) = tokio::sync::watch::channel(true);
        let inf = Informer { store: store.clone(), tx: tx.clone(), ready, recent_deletions: Default::default() };
        let mut sub = Box::pin(inf.subscribe());
        for i in 0..5 {
            let p = pod(&format!("p{i}"));
            writer.apply_watcher_event(&watcher::Event::Apply(p.clone()));
            let _ = tx.send((Arc::new(p), false));
        }
        // Missed three: resynced with all five, then the two still buffered.
        let mut names = Vec::new();
        for _ in 0..7 {
            names.push(sub.next().await.expect("item").metadata.name.clone().expect("name"));
        }
        let mut first: Vec<_> = names[..5].to_vec();
        first.sort();
        assert_eq!(first, vec!["p0", "p1", "p2", "p3", "p4"]);
        assert_eq!(&names[5..], &["p3".to_string(), "p4".to_string()]);
    }

    fn name(p: &Arc<Pod>) -> String {
        p.metadata.name.clone().unwrap_or_default()
    }

    #[tokio::test]
    async fn a_relist_announces_what_it_dropped_as_deleted() {
        let (inf, mut feed) = Informer::<Pod>::parts();
        for ev in [watcher::Event::Init, watcher::Event::InitApply(pod("a")), watcher::Event::InitApply(pod("b")), watcher::Event::InitDone] {
            feed.apply(ev);
        }
        let mut sub = Box::pin(inf.subscribe());
        let mut applied = Box::pin(inf.subscribe_applied());
        let mut first: Vec<String> = vec![name(&sub.next().await.expect("a")), name(&sub.next().await.expect("b"))];
        first.sort();
        assert_eq!(first, ["a", "b"]);
        // The watch comes back after "b" was deleted: the relist no longer has it.
        for ev in [watcher::Event::Init, watcher::Event::InitApply(pod("a")), watcher::Event::InitDone] {
            feed.apply(ev);
        }
        assert_eq!(name(&sub.next().await.expect("deleted b")), "b", "announced as deleted");
        assert_eq!(name(&sub.next().await.expect("a again")), "a");
        // Subscribers of applied objects only see what exists.
        let seen: Vec<String> = vec![name(&applied.next().await.expect("1")), name(&applied.next().await.expect("2")), name(&applied.next().await.expect("3"))];
        assert!(!seen[2..].contains(&"b".to_string()), "{seen:?}");
    }

    #[tokio::test]
    async fn a_lagging_subscriber_also_gets_the_deletions_it_missed() {
        let (inf, mut feed) = Informer::<Pod>::parts();
        feed.apply(watcher::Event::Init);
        feed.apply(watcher::Event::InitDone);
        let mut sub = Box::pin(inf.subscribe());
        feed.apply(watcher::Event::Apply(pod("gone")));
        feed.apply(watcher::Event::Delete(pod("gone")));
        for i in 0..BUFFER {
            feed.apply(watcher::Event::Apply(pod(&format!("p{}", i % 3))));
        }
        // Far behind: the cache (p0..p2) and the recent deletion, before what is still buffered.
        let mut resync = Vec::new();
        for _ in 0..4 {
            resync.push(name(&sub.next().await.expect("item")));
        }
        resync.sort();
        assert_eq!(resync, ["gone", "p0", "p1", "p2"]);
    }
}
