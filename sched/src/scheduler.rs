//! The scheduling loop, shaped like kube-scheduler's: watches of Nodes and Pods keep a
//! node-info cache (`cache`) and a queue of pending pods up to date one event at a time; the
//! scheduling cycle takes the next pod by priority, searches a rotating sample of the nodes for
//! feasible ones (percentageOfNodesToScore), scores them, assumes the pod on the best node and
//! hands the binding to a task (the binding cycle), bounded in number; a failed binding forgets
//! the assumption and requeues the pod. Unschedulable pods wait with upstream's backoff until a
//! relevant change.

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Event, EventSource, Namespace, Node, ObjectReference, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use serde_json::json;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;

use crate::cache::{is_terminal, key, node_name, nodes_to_find, Cache};
use crate::filter::{self, Failure, PodInfo};
use crate::{interpod, preempt, volume};

pub const SCHEDULER_NAME: &str = "default-scheduler";

/// upstream's podInitialBackoffDuration / podMaxBackoffDuration.
const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// upstream's podMaxInUnschedulablePodsDuration: retry even without a relevant change.
const MAX_UNSCHEDULABLE: Duration = Duration::from_secs(300);
/// How long an assumed pod counts after its binding returned without the watch showing it.
const ASSUME_TTL: Duration = Duration::from_secs(30);
/// Repeat an unchanged FailedScheduling event at most this often.
const EVENT_REPEAT: Duration = Duration::from_secs(60);
/// Bindings (and unschedulable status writes) in flight at most.
const BIND_CONCURRENCY: usize = 64;
/// How long one binding request may take before the pod is retried.
const BIND_TIMEOUT: Duration = Duration::from_secs(30);
/// Events waiting to be written at most; beyond that they are dropped (best effort).
const EVENT_QUEUE: usize = 2048;
const EVENT_CONCURRENCY: usize = 16;
/// How often waiting pods are checked for an expired backoff.
const FLUSH_EVERY: Duration = Duration::from_millis(200);

struct Unschedulable {
    uid: String,
    attempts: u32,
    last: Instant,
    /// The cluster generation at the last attempt: a later one means something changed.
    generation: u64,
    /// The pod itself changed since the last attempt.
    updated: bool,
    /// Waiting (not in the active queue).
    waiting: bool,
    fingerprint: String,
    event_message: String,
    event_at: Option<Instant>,
}

impl Unschedulable {
    fn backoff(&self) -> Duration {
        let exp = self.attempts.saturating_sub(1).min(16);
        (INITIAL_BACKOFF * 2u32.pow(exp)).min(MAX_BACKOFF)
    }

    fn ready_at(&self, generation: u64) -> Instant {
        if self.updated || generation > self.generation {
            self.last + self.backoff()
        } else {
            self.last + MAX_UNSCHEDULABLE
        }
    }
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Unassigned, for us, not being deleted and not gated.
pub(crate) fn is_pending(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else { return false };
    node_name(pod).is_none()
        && spec.scheduler_name.as_deref().is_none_or(|s| s.is_empty() || s == SCHEDULER_NAME)
        && pod.metadata.deletion_timestamp.is_none()
        && spec.scheduling_gates.as_ref().is_none_or(|g| g.is_empty())
        && pod.metadata.namespace.is_some()
        && pod.metadata.name.is_some()
        && !is_terminal(pod)
}

/// What of a pending pod can change whether it fits (its status cannot).
fn fingerprint(pod: &Pod) -> String {
    serde_json::to_string(&(&pod.spec, &pod.metadata.labels)).unwrap_or_default()
}

fn is_fenced(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409 && s.message.contains("fenced"))
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409 || s.code == 404)
}

fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// One watch event, from either watch.
enum Input {
    Node(Box<watcher::Event<Node>>),
    Pod(Box<watcher::Event<Pod>>),
    Namespace(Box<watcher::Event<Namespace>>),
    Claim(Box<watcher::Event<PersistentVolumeClaim>>),
    Volume(Box<watcher::Event<PersistentVolume>>),
    Class(Box<watcher::Event<StorageClass>>),
    Budget(Box<watcher::Event<PodDisruptionBudget>>),
}

/// What a binding task reports back.
enum Done {
    Bound { key: String, uid: String },
    Failed { key: String, uid: String, node: String, error: String, conflict: bool },
    Fenced(kube::Error),
}

/// Feeds one watch's events to the scheduling loop.
async fn drive<K, S>(stream: S, tx: mpsc::UnboundedSender<Input>, wrap: fn(watcher::Event<K>) -> Input)
where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(ev) => {
                if tx.send(wrap(ev)).is_err() {
                    return;
                }
            }
            // default_backoff() retries; this is only worth a log line.
            Err(e) => tracing::warn!(error = %e, "scheduler watch failed"),
        }
    }
}

/// Keeps a map of objects up to date from watch events (a re-list replaces it).
fn apply_map<K>(map: &mut HashMap<String, Arc<K>>, ev: watcher::Event<K>, key: impl Fn(&K) -> String) {
    match ev {
        watcher::Event::Init => map.clear(),
        watcher::Event::InitApply(o) | watcher::Event::Apply(o) => {
            map.insert(key(&o), Arc::new(o));
        }
        watcher::Event::Delete(o) => {
            map.remove(&key(&o));
        }
        watcher::Event::InitDone => {}
    }
}

/// An entry of the active queue: higher priority first, then older, then first queued.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Queued {
    priority: i32,
    created: std::cmp::Reverse<i128>,
    seq: std::cmp::Reverse<u64>,
    key: String,
}

/// An Event the recorder task writes.
struct EventReq {
    pod: Arc<Pod>,
    type_: &'static str,
    reason: &'static str,
    action: &'static str,
    message: String,
}

/// Where the scheduler's own time goes, logged every STATS_EVERY (`kuberaft bench sched` reads
/// these lines to tell the scheduler's cost from the API server's).
#[derive(Default)]
struct Stats {
    attempts: u64,
    cycle: Duration,
    events: u64,
    apply: Duration,
}

const STATS_EVERY: Duration = Duration::from_secs(5);

/// The per-term scheduler state.
pub struct Scheduler {
    client: Client,
    identity: String,
    cache: Cache,
    /// Pending pods (unassigned, ours) by key, as last seen.
    pending: HashMap<String, Arc<Pod>>,
    active: BinaryHeap<Queued>,
    queued: HashSet<String>,
    seq: u64,
    unschedulable: HashMap<String, Unschedulable>,
    /// Bumped on every change that can make a waiting pod fit.
    generation: u64,
    /// Where the next feasibility search starts (rotating, as upstream's nextStartNodeIndex).
    next_start: usize,
    events: Option<mpsc::Sender<EventReq>>,
    /// Re-lists in progress: the keys seen since the watch restarted.
    relist_pods: Option<HashSet<String>>,
    relist_nodes: Option<HashSet<String>>,
}

/// Chooses a node for `pod`: filters a rotating sample of the cache's nodes, scores the feasible
/// ones with upstream's default weights, and returns the best (ties at random), or the fit
/// error message. `start` is advanced past the nodes examined.
/// Why a pod fits nowhere: every node's failure, the nodes where preemption may help, and the
/// pod's inter-pod state (for the preemption search).
pub(crate) struct Unfit {
    /// PreFilter rejected the pod on every node with this message.
    pub prefilter: Option<String>,
    pub failures: Vec<Failure>,
    pub resolvable: Vec<usize>,
    pub prep: interpod::Prepared,
}

/// The node chosen, and the pod's claims to provision for it.
pub(crate) struct Chosen {
    pub node: String,
    pub delayed: Vec<Arc<PersistentVolumeClaim>>,
}

pub(crate) fn choose(cache: &Cache, pod: &Pod, start: &mut usize) -> Result<Chosen, Box<Unfit>> {
    let info = PodInfo::of(pod);
    let (prio, own) = (priority(pod), key(pod));
    let prep = interpod::prepare(cache, pod);
    let claims = if volume::uses_claims(pod) {
        match volume::prefilter(&cache.volumes, pod) {
            Ok(c) => c,
            Err(msg) => return Err(Box::new(Unfit { prefilter: Some(msg), failures: vec![], resolvable: vec![], prep })),
        }
    } else {
        volume::Claims::default()
    };
    let chosen = |name: &str| Chosen { node: name.to_string(), delayed: claims.delayed.clone() };
    let n = cache.nodes.len();
    let want = nodes_to_find(cache.num_nodes());
    let mut feasible: Vec<usize> = Vec::with_capacity(want.min(n));
    let mut failures: Vec<Failure> = Vec::new();
    let mut resolvable: Vec<usize> = Vec::new();
    let mut examined = 0;
    for off in 0..n {
        let i = (*start + off) % n;
        examined += 1;
        let ni = &cache.nodes[i];
        let Some(node) = &ni.node else { continue };
        let reserved = cache.with_nominated(ni, prio, &own);
        match filter::filter_node(pod, &info, node, &ni.alloc, ni.ready, reserved.as_ref().unwrap_or(&ni.usage)).and_then(|()| claims.filter(node)).and_then(|()| prep.filter(node)) {
            Ok(()) => {
                feasible.push(i);
                if feasible.len() >= want {
                    break;
                }
            }
            Err(f) => {
                if !f.unresolvable {
                    resolvable.push(i);
                }
                failures.push(f)
            }
        }
    }
    if n > 0 {
        *start = (*start + examined) % n;
    }
    if feasible.is_empty() {
        return Err(Box::new(Unfit { prefilter: None, failures, resolvable, prep }));
    }
    if feasible.len() == 1 {
        return Ok(chosen(&cache.nodes[feasible[0]].name));
    }
    let nodes: Vec<&Node> = feasible.iter().filter_map(|i| cache.nodes[*i].node.as_deref()).collect();
    let mut affinity: Vec<i64> = nodes.iter().map(|n| filter::preferred_node_affinity(pod, n)).collect();
    filter::normalize(&mut affinity, false);
    let mut taints: Vec<i64> = nodes.iter().map(|n| filter::intolerable_prefer_no_schedule(pod, n)).collect();
    filter::normalize(&mut taints, true);
    let inter = prep.affinity_scores(&nodes);
    let spread = prep.spread_scores(&nodes);
    let mut best = i64::MIN;
    let mut best_i = feasible[0];
    let mut ties = 0u32;
    for (j, &i) in feasible.iter().enumerate() {
        let ni = &cache.nodes[i];
        let s = filter::WEIGHT_LEAST_ALLOCATED * filter::least_allocated(&info, &ni.alloc, &ni.usage)
            + filter::WEIGHT_BALANCED_ALLOCATION * filter::balanced_allocation(&info, &ni.alloc, &ni.usage)
            + filter::WEIGHT_NODE_AFFINITY * affinity[j]
            + filter::WEIGHT_TAINT_TOLERATION * taints[j]
            + filter::WEIGHT_INTER_POD_AFFINITY * inter.as_ref().map_or(0, |s| s[j])
            + filter::WEIGHT_TOPOLOGY_SPREAD * spread.as_ref().map_or(0, |s| s[j]);
        if s > best {
            best = s;
            best_i = i;
            ties = 1;
        } else if s == best {
            // Reservoir sampling among equal scores, as upstream's selectHost.
            ties += 1;
            if rand::random_range(0..ties) == 0 {
                best_i = i;
            }
        }
    }
    Ok(chosen(&cache.nodes[best_i].name))
}

impl Scheduler {
    pub fn new(client: Client, identity: String) -> Self {
        Scheduler {
            client,
            identity,
            cache: Cache::default(),
            pending: HashMap::new(),
            active: BinaryHeap::new(),
            queued: HashSet::new(),
            seq: 0,
            unschedulable: HashMap::new(),
            generation: 0,
            next_start: 0,
            events: None,
            relist_pods: None,
            relist_nodes: None,
        }
    }

    /// Schedules until `lost` turns true (Ok) or a write is fenced (Err): both end this term.
    pub async fn run(mut self, mut lost: watch::Receiver<bool>) -> anyhow::Result<()> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let nodes = watcher(Api::<Node>::all(self.client.clone()), watcher::Config::default()).default_backoff();
        let pods = watcher(Api::<Pod>::all(self.client.clone()), watcher::Config::default()).default_backoff();
        let namespaces = watcher(Api::<Namespace>::all(self.client.clone()), watcher::Config::default()).default_backoff();
        let claims = watcher(Api::<PersistentVolumeClaim>::all(self.client.clone()), watcher::Config::default()).default_backoff();
        let volumes = watcher(Api::<PersistentVolume>::all(self.client.clone()), watcher::Config::default()).default_backoff();
        let classes = watcher(Api::<StorageClass>::all(self.client.clone()), watcher::Config::default()).default_backoff();
        let budgets = watcher(Api::<PodDisruptionBudget>::all(self.client.clone()), watcher::Config::default()).default_backoff();
        let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
        self.events = Some(ev_tx);
        let _tasks = [
            AbortOnDrop(tokio::spawn(drive(nodes, tx.clone(), |e| Input::Node(Box::new(e))))),
            AbortOnDrop(tokio::spawn(drive(pods, tx.clone(), |e| Input::Pod(Box::new(e))))),
            AbortOnDrop(tokio::spawn(drive(namespaces, tx.clone(), |e| Input::Namespace(Box::new(e))))),
            AbortOnDrop(tokio::spawn(drive(claims, tx.clone(), |e| Input::Claim(Box::new(e))))),
            AbortOnDrop(tokio::spawn(drive(volumes, tx.clone(), |e| Input::Volume(Box::new(e))))),
            AbortOnDrop(tokio::spawn(drive(classes, tx.clone(), |e| Input::Class(Box::new(e))))),
            AbortOnDrop(tokio::spawn(drive(budgets, tx, |e| Input::Budget(Box::new(e))))),
            AbortOnDrop(tokio::spawn(record_events(self.client.clone(), self.identity.clone(), ev_rx))),
        ];
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let binds = Arc::new(Semaphore::new(BIND_CONCURRENCY));

        // The cache must hold every node and pod before the first decision.
        let (mut nodes_synced, mut pods_synced) = (false, false);
        while !(nodes_synced && pods_synced) {
            tokio::select! {
                _ = lost.wait_for(|l| *l) => return Ok(()),
                i = rx.recv() => {
                    let Some(i) = i else { bail!("scheduler watches ended") };
                    match &i {
                        Input::Node(e) if matches!(**e, watcher::Event::InitDone) => nodes_synced = true,
                        Input::Pod(e) if matches!(**e, watcher::Event::InitDone) => pods_synced = true,
                        _ => {}
                    }
                    self.apply(i);
                }
            }
        }
        tracing::info!(identity = %self.identity, nodes = self.cache.num_nodes(), pending = self.pending.len(), "scheduler started");
        let mut last_flush = Instant::now();
        let (mut stats, mut last_stats) = (Stats::default(), Instant::now());
        loop {
            let t = Instant::now();
            while let Ok(i) = rx.try_recv() {
                self.apply(i);
                stats.events += 1;
            }
            stats.apply += t.elapsed();
            if last_stats.elapsed() >= STATS_EVERY {
                if stats.attempts > 0 || stats.events > 0 {
                    tracing::info!(attempts = stats.attempts, cycle_us = stats.cycle.as_micros() as u64, events = stats.events, events_us = stats.apply.as_micros() as u64, nodes = self.cache.num_nodes(), "scheduling stats");
                }
                (stats, last_stats) = (Stats::default(), Instant::now());
            }
            while let Ok(d) = done_rx.try_recv() {
                self.done(d)?;
            }
            if last_flush.elapsed() >= FLUSH_EVERY {
                self.flush();
                last_flush = Instant::now();
            }
            if *lost.borrow() {
                return Ok(());
            }
            if let Some(pod) = self.pop() {
                let permit = tokio::select! {
                    p = binds.clone().acquire_owned() => p.context("binding semaphore closed")?,
                    _ = lost.wait_for(|l| *l) => return Ok(()),
                };
                let t = Instant::now();
                self.schedule_one(pod, permit, &done_tx);
                stats.cycle += t.elapsed();
                stats.attempts += 1;
                // The scheduler shares the replica's runtime with its API server (and the
                // Lease renewals): let other tasks run between pods.
                tokio::task::yield_now().await;
                continue;
            }
            let waiting = !self.unschedulable.is_empty() || self.cache.assumed_count() > 0;
            // Wake to log the stats of a burst that just ended, not at the next event.
            let unlogged = stats.attempts > 0 || stats.events > 0;
            tokio::select! {
                _ = lost.wait_for(|l| *l) => return Ok(()),
                i = rx.recv() => {
                    let Some(i) = i else { bail!("scheduler watches ended") };
                    let t = Instant::now();
                    self.apply(i);
                    stats.apply += t.elapsed();
                    stats.events += 1;
                }
                d = done_rx.recv() => {
                    if let Some(d) = d {
                        self.done(d)?;
                    }
                }
                _ = tokio::time::sleep(FLUSH_EVERY), if waiting => {}
                _ = tokio::time::sleep_until(last_stats + STATS_EVERY), if unlogged => {}
            }
        }
    }

    /// A relevant change: waiting pods may fit now.
    fn changed(&mut self) {
        self.generation += 1;
    }

    fn apply(&mut self, input: Input) {
        match input {
            Input::Node(ev) => match *ev {
                watcher::Event::Init => self.relist_nodes = Some(HashSet::new()),
                watcher::Event::InitApply(n) | watcher::Event::Apply(n) => {
                    if let (Some(seen), Some(name)) = (self.relist_nodes.as_mut(), n.metadata.name.as_ref()) {
                        seen.insert(name.clone());
                    }
                    self.cache.upsert_node(Arc::new(n));
                    self.changed();
                }
                watcher::Event::Delete(n) => {
                    if let Some(name) = &n.metadata.name {
                        self.cache.remove_node(name);
                    }
                }
                watcher::Event::InitDone => {
                    if let Some(seen) = self.relist_nodes.take() {
                        for name in self.cache.node_names() {
                            if !seen.contains(&name) {
                                self.cache.remove_node(&name);
                            }
                        }
                    }
                    self.changed();
                }
            },
            Input::Namespace(ev) => match *ev {
                watcher::Event::InitApply(n) | watcher::Event::Apply(n) => {
                    if let Some(name) = n.metadata.name {
                        let labels = n.metadata.labels.unwrap_or_default();
                        if self.cache.namespaces.get(&name) != Some(&labels) {
                            self.cache.namespaces.insert(name, labels);
                            self.changed();
                        }
                    }
                }
                watcher::Event::Delete(n) => {
                    if let Some(name) = n.metadata.name {
                        self.cache.namespaces.remove(&name);
                    }
                }
                watcher::Event::Init | watcher::Event::InitDone => {}
            },
            Input::Claim(ev) => {
                let key = |c: &PersistentVolumeClaim| format!("{}/{}", c.metadata.namespace.as_deref().unwrap_or(""), c.metadata.name.as_deref().unwrap_or(""));
                apply_map(&mut self.cache.volumes.claims, *ev, key);
                self.changed();
            }
            Input::Volume(ev) => {
                apply_map(&mut self.cache.volumes.volumes, *ev, |v| v.metadata.name.clone().unwrap_or_default());
                self.changed();
            }
            Input::Class(ev) => {
                apply_map(&mut self.cache.volumes.classes, *ev, |v| v.metadata.name.clone().unwrap_or_default());
                self.changed();
            }
            Input::Budget(ev) => {
                let key = |b: &PodDisruptionBudget| format!("{}/{}", b.metadata.namespace.as_deref().unwrap_or(""), b.metadata.name.as_deref().unwrap_or(""));
                apply_map(&mut self.cache.pdbs, *ev, key);
            }
            Input::Pod(ev) => match *ev {
                watcher::Event::Init => self.relist_pods = Some(HashSet::new()),
                watcher::Event::InitApply(p) | watcher::Event::Apply(p) => {
                    if let Some(seen) = self.relist_pods.as_mut() {
                        seen.insert(key(&p));
                    }
                    self.on_pod(Arc::new(p));
                }
                watcher::Event::Delete(p) => self.on_pod_deleted(&key(&p)),
                watcher::Event::InitDone => {
                    if let Some(seen) = self.relist_pods.take() {
                        let gone: Vec<String> = self.cache.counted_keys().into_iter().chain(self.pending.keys().cloned()).filter(|k| !seen.contains(k)).collect();
                        for k in gone {
                            self.on_pod_deleted(&k);
                        }
                    }
                }
            },
        }
    }

    fn on_pod(&mut self, pod: Arc<Pod>) {
        let k = key(&pod);
        if self.cache.update_pod(pod.clone()) {
            self.changed();
        }
        if is_pending(&pod) {
            if self.cache.is_assumed(&k) {
                self.pending.insert(k, pod);
                return;
            }
            match self.unschedulable.get_mut(&k) {
                Some(u) if u.uid == pod.metadata.uid.clone().unwrap_or_default() => {
                    if u.waiting && !u.updated && u.fingerprint != fingerprint(&pod) {
                        u.updated = true;
                    }
                }
                _ => {
                    self.unschedulable.remove(&k);
                    self.enqueue(&k, &pod);
                }
            }
            self.pending.insert(k, pod);
        } else {
            self.pending.remove(&k);
            self.unschedulable.remove(&k);
            self.cache.nominated.remove(&k);
        }
    }

    fn on_pod_deleted(&mut self, k: &str) {
        if self.cache.delete_pod(k) {
            self.changed();
        }
        self.pending.remove(k);
        self.unschedulable.remove(k);
        self.cache.nominated.remove(k);
    }

    fn enqueue(&mut self, k: &str, pod: &Pod) {
        if !self.queued.insert(k.to_string()) {
            return;
        }
        self.seq += 1;
        let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0.as_nanosecond()).unwrap_or(0);
        self.active.push(Queued { priority: priority(pod), created: std::cmp::Reverse(created), seq: std::cmp::Reverse(self.seq), key: k.to_string() });
    }

    fn pop(&mut self) -> Option<Arc<Pod>> {
        while let Some(q) = self.active.pop() {
            self.queued.remove(&q.key);
            let Some(pod) = self.pending.get(&q.key) else { continue };
            if self.cache.is_assumed(&q.key) || self.unschedulable.get(&q.key).is_some_and(|u| u.waiting) {
                continue;
            }
            return Some(pod.clone());
        }
        None
    }

    /// Moves waiting pods whose backoff is over back to the active queue; expires assumptions.
    fn flush(&mut self) {
        let now = Instant::now();
        let generation = self.generation;
        let ready: Vec<String> = self.unschedulable.iter().filter(|(_, u)| u.waiting && u.ready_at(generation) <= now).map(|(k, _)| k.clone()).collect();
        for k in ready {
            if let Some(u) = self.unschedulable.get_mut(&k) {
                u.waiting = false;
            }
            if let Some(p) = self.pending.get(&k).cloned() {
                self.enqueue(&k, &p);
            }
        }
        if self.cache.expire(ASSUME_TTL) > 0 {
            self.changed();
        }
    }

    fn entry(&mut self, pod: &Pod) -> &mut Unschedulable {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let generation = self.generation;
        self.unschedulable.entry(key(pod)).or_insert_with(|| Unschedulable {
            uid,
            attempts: 0,
            last: Instant::now(),
            generation,
            updated: false,
            waiting: false,
            fingerprint: String::new(),
            event_message: String::new(),
            event_at: None,
        })
    }

    /// Puts a pod back to wait for its backoff.
    fn backoff(&mut self, pod: &Pod, moved: bool) {
        let generation = self.generation;
        let u = self.entry(pod);
        u.attempts += 1;
        u.last = Instant::now();
        u.generation = generation;
        u.updated = moved;
        u.waiting = true;
        u.fingerprint = fingerprint(pod);
    }

    /// The scheduling cycle of one pod; the binding cycle runs in a task holding `permit`.
    fn schedule_one(&mut self, pod: Arc<Pod>, permit: tokio::sync::OwnedSemaphorePermit, done: &mpsc::UnboundedSender<Done>) {
        let k = key(&pod);
        match choose(&self.cache, &pod, &mut self.next_start) {
            Ok(Chosen { node, delayed }) => {
                tracing::debug!(pod = %k, node = %node, "assumed");
                self.cache.assume(pod.clone(), &node);
                let (client, done, events) = (self.client.clone(), done.clone(), self.events.clone());
                tokio::spawn(async move {
                    let uid = pod.metadata.uid.clone().unwrap_or_default();
                    let res = binding_cycle(&client, &pod, &node, &delayed, permit).await;
                    let msg = match res {
                        Ok(()) => {
                            if let Some(ev) = events {
                                let message = format!("Successfully assigned {k} to {node}");
                                let _ = ev.try_send(EventReq { pod, type_: "Normal", reason: "Scheduled", action: "Binding", message });
                            }
                            Done::Bound { key: k, uid }
                        }
                        Err(BindError::Api(e)) if is_fenced(&e) => Done::Fenced(e),
                        Err(BindError::Api(e)) => Done::Failed { key: k, uid, node, conflict: is_conflict(&e), error: e.to_string() },
                        Err(BindError::Volumes(error)) => Done::Failed { key: k, uid, node, conflict: false, error },
                    };
                    let _ = done.send(msg);
                });
            }
            Err(unfit) => {
                let (msg, clear) = self.postfilter(&pod, unfit);
                self.unschedulable_pod(pod, msg, clear, permit, done)
            }
        }
    }

    /// Preemption for a pod that fits nowhere; returns the FailedScheduling message, and
    /// whether the pod's nomination is to be cleared (it had one, and preemption found no node:
    /// upstream's PostFilter answers with an empty nomination then).
    fn postfilter(&mut self, pod: &Arc<Pod>, unfit: Box<Unfit>) -> (String, bool) {
        let num = self.cache.num_nodes();
        let k = key(pod);
        let status_nomination = pod.status.as_ref().and_then(|s| s.nominated_node_name.clone()).filter(|n| !n.is_empty());
        let nominated = self.cache.nominated.get(&k).map(|n| n.0.clone()).or_else(|| status_nomination.clone());
        if let Some(msg) = &unfit.prefilter {
            return (filter::fit_error_prefilter(num, msg), false);
        }
        if !preempt::may_preempt(pod) {
            return (filter::fit_error_with(num, &unfit.failures, Some("not eligible due to preemptionPolicy=Never.")), false);
        }
        if nominated.as_deref().is_some_and(|n| preempt::waiting_for_victims(&self.cache, pod, n)) {
            return (filter::fit_error_with(num, &unfit.failures, Some("not eligible due to a terminating pod on the nominated node.")), false);
        }
        let Some(c) = preempt::find(&self.cache, pod, &unfit.prep, &unfit.resolvable) else {
            let had = self.cache.nominated.remove(&k).is_some() || status_nomination.is_some();
            return (filter::fit_error_message(num, &unfit.failures), had);
        };
        tracing::info!(pod = %k, node = %c.node, victims = c.victims.len(), "preempting");
        let priority = preempt::priority(pod);
        // Lower-priority pods nominated to the same node may not fit there any more: they lose
        // their nomination and are tried again (upstream's prepareCandidate).
        let displaced: Vec<Arc<Pod>> = self
            .cache
            .nominated
            .iter()
            .filter(|(other, (node, p, _))| **other != k && *node == c.node && *p < priority)
            .filter_map(|(other, _)| self.pending.get(other).cloned())
            .collect();
        for d in &displaced {
            let dk = key(d);
            self.cache.nominated.remove(&dk);
            self.enqueue(&dk, d);
        }
        self.cache.nominated.insert(k, (c.node.clone(), priority, PodInfo::of(pod)));
        let (client, events) = (self.client.clone(), self.events.clone());
        let pod = pod.clone();
        tokio::spawn(async move {
            for d in &displaced {
                if let Err(e) = set_nomination(&client, d, None).await {
                    tracing::debug!(pod = %key(d), error = %e, "clearing a nomination failed");
                }
            }
            if let Err(e) = preempt_victims(&client, &pod, &c, events).await {
                tracing::warn!(error = %e, "preemption failed");
            }
        });
        (filter::fit_error_with(num, &unfit.failures, Some("")), false)
    }

    fn done(&mut self, d: Done) -> anyhow::Result<()> {
        match d {
            Done::Bound { key, uid } => {
                tracing::debug!(pod = %key, "bound");
                self.cache.finish_binding(&key, &uid);
                self.unschedulable.remove(&key);
            }
            Done::Failed { key, uid, node, error, conflict } => {
                // A conflict means the pod changed (bound elsewhere, deleted): the watch will
                // tell; either way retry after a backoff, not at once.
                if conflict {
                    tracing::debug!(pod = %key, error = %error, "pod changed under the scheduler");
                } else {
                    tracing::warn!(pod = %key, node = %node, error = %error, "binding failed");
                }
                if self.cache.forget(&key, &uid) {
                    self.changed();
                }
                if let Some(p) = self.pending.get(&key).cloned() {
                    self.backoff(&p, true);
                }
            }
            Done::Fenced(e) => return Err(e).context("a scheduler write was fenced: leadership lost"),
        }
        Ok(())
    }

    /// Records the failure: backoff state, then (in a task) the PodScheduled condition and a
    /// FailedScheduling event.
    fn unschedulable_pod(&mut self, pod: Arc<Pod>, msg: String, clear_nomination: bool, permit: tokio::sync::OwnedSemaphorePermit, done: &mpsc::UnboundedSender<Done>) {
        let k = key(&pod);
        tracing::debug!(pod = %k, message = %msg, "unschedulable");
        self.backoff(&pod, false);
        let u = self.entry(&pod);
        let repeat = u.event_message != msg || u.event_at.is_none_or(|t| t.elapsed() >= EVENT_REPEAT);
        if repeat {
            u.event_message = msg.clone();
            u.event_at = Some(Instant::now());
            if let Some(ev) = &self.events {
                let _ = ev.try_send(EventReq { pod: pod.clone(), type_: "Warning", reason: "FailedScheduling", action: "Scheduling", message: msg.clone() });
            }
        }
        let current = pod.status.as_ref().and_then(|s| s.conditions.as_ref()).and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"));
        let same = current.is_some_and(|c| c.status == "False" && c.reason.as_deref() == Some("Unschedulable") && c.message.as_deref() == Some(msg.as_str()));
        if same && !clear_nomination {
            return;
        }
        let (client, done) = (self.client.clone(), done.clone());
        tokio::spawn(async move {
            let (ns, name) = (pod.metadata.namespace.as_deref().unwrap_or(""), pod.metadata.name.as_deref().unwrap_or(""));
            let mut patch = json!({"status": {"conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": msg,
                "lastProbeTime": null, "lastTransitionTime": Time(Timestamp::now()),
            }]}});
            if clear_nomination {
                patch["status"]["nominatedNodeName"] = serde_json::Value::Null;
            }
            let api: Api<Pod> = Api::namespaced(client, ns);
            match api.patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch)).await {
                Ok(_) => {}
                Err(e) if is_fenced(&e) => {
                    let _ = done.send(Done::Fenced(e));
                }
                Err(e) => tracing::warn!(pod = %k, error = %e, "setting PodScheduled=False failed"),
            }
            drop(permit);
        });
    }
}

/// Sets (or, with None, removes) a pod's status.nominatedNodeName.
async fn set_nomination(client: &Client, pod: &Pod, node: Option<&str>) -> Result<(), kube::Error> {
    let (ns, name) = (pod.metadata.namespace.as_deref().unwrap_or(""), pod.metadata.name.as_deref().unwrap_or(""));
    let patch = json!({"status": {"nominatedNodeName": node}});
    Api::<Pod>::namespaced(client.clone(), ns).patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| ())
}

/// Carries out a preemption: the preemptor's status.nominatedNodeName, then per victim a
/// DisruptionTarget condition, its deletion and a Preempted event.
async fn preempt_victims(client: &Client, pod: &Pod, c: &preempt::Candidate, events: Option<mpsc::Sender<EventReq>>) -> Result<(), kube::Error> {
    set_nomination(client, pod, Some(&c.node)).await?;
    let scheduler = pod.spec.as_ref().and_then(|s| s.scheduler_name.clone()).unwrap_or_else(|| SCHEDULER_NAME.to_string());
    for v in &c.victims {
        let (vns, vname) = (v.metadata.namespace.as_deref().unwrap_or(""), v.metadata.name.as_deref().unwrap_or(""));
        let api: Api<Pod> = Api::namespaced(client.clone(), vns);
        let cond = json!({"status": {"conditions": [{
            "type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
            "message": format!("{scheduler}: preempting to accommodate a higher priority pod"),
            "lastTransitionTime": Time(Timestamp::now()),
        }]}});
        if let Err(e) = api.patch_status(vname, &PatchParams::default(), &Patch::Strategic(&cond)).await {
            tracing::debug!(pod = vname, error = %e, "DisruptionTarget condition not written");
        }
        let dp = kube::api::DeleteParams { preconditions: Some(kube::api::Preconditions { uid: v.metadata.uid.clone(), resource_version: None }), ..Default::default() };
        match api.delete(vname, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => continue,
            Err(e) => return Err(e),
        }
        if let Some(ev) = &events {
            let message = format!("Preempted by pod {} on node {}", pod.metadata.uid.as_deref().unwrap_or(""), c.node);
            let _ = ev.try_send(EventReq { pod: v.clone(), type_: "Normal", reason: "Preempted", action: "Preempting", message });
        }
    }
    Ok(())
}

enum BindError {
    Api(kube::Error),
    Volumes(String),
}

/// How long a pod waits for its WaitForFirstConsumer claims to be bound (upstream's
/// bindTimeoutSeconds is 600).
const VOLUME_BIND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// The binding cycle: PreBind (claims to provision get the selected-node annotation; the pod
/// waits for them to be bound, without holding a binding slot), then Bind.
async fn binding_cycle(client: &Client, pod: &Pod, node: &str, delayed: &[Arc<PersistentVolumeClaim>], permit: tokio::sync::OwnedSemaphorePermit) -> Result<(), BindError> {
    if delayed.is_empty() {
        let r = bind(client, pod, node).await.map_err(BindError::Api);
        drop(permit);
        return r;
    }
    drop(permit);
    for pvc in delayed {
        let (ns, name) = (pvc.metadata.namespace.as_deref().unwrap_or(""), pvc.metadata.name.as_deref().unwrap_or(""));
        let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
        let current = pvc.metadata.annotations.as_ref().and_then(|a| a.get(volume::SELECTED_NODE));
        if current.map(String::as_str) != Some(node) {
            let patch = json!({"metadata": {"annotations": {volume::SELECTED_NODE: node}}});
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.map_err(BindError::Api)?;
        }
    }
    let t = Instant::now();
    for pvc in delayed {
        let (ns, name) = (pvc.metadata.namespace.as_deref().unwrap_or(""), pvc.metadata.name.as_deref().unwrap_or(""));
        let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
        loop {
            match api.get_opt(name).await.map_err(BindError::Api)? {
                Some(c) if volume::is_bound(&c) => break,
                Some(_) => {}
                None => return Err(BindError::Volumes(format!("persistentvolumeclaim \"{name}\" not found"))),
            }
            if t.elapsed() > VOLUME_BIND_TIMEOUT {
                return Err(BindError::Volumes(format!("binding volumes: timed out waiting for persistentvolumeclaim \"{name}\"")));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    bind(client, pod, node).await.map_err(BindError::Api)
}

/// POST pods/NAME/binding, with the pod's UID as precondition.
async fn bind(client: &Client, pod: &Pod, node: &str) -> Result<(), kube::Error> {
    let (ns, name) = (pod.metadata.namespace.as_deref().unwrap_or(""), pod.metadata.name.as_deref().unwrap_or(""));
    let body = json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": name, "namespace": ns, "uid": pod.metadata.uid},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    let req = http::Request::post(format!("/api/v1/namespaces/{ns}/pods/{name}/binding"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(&body).map_err(kube::Error::SerdeError)?)
        .map_err(kube::Error::HttpError)?;
    // Bounded, so that a request lost in a stuck connection returns its permit and the pod to
    // the queue (a binding that did land shows up on the watch, and the retry gets a conflict).
    match tokio::time::timeout(BIND_TIMEOUT, client.request::<serde_json::Value>(req)).await {
        Ok(r) => r.map(|_| ()),
        Err(_) => Err(kube::Error::Service(format!("binding pod {ns}/{name} to {node}: no answer within {BIND_TIMEOUT:?}").into())),
    }
}

/// Writes the Events queued by the loop and the binding tasks, a few at a time. Failures are
/// logged: events are best effort (a fenced write ends the term through the bindings).
async fn record_events(client: Client, identity: String, rx: mpsc::Receiver<EventReq>) {
    tokio_stream_of(rx)
        .for_each_concurrent(EVENT_CONCURRENCY, |r| {
            let (client, identity) = (client.clone(), identity.clone());
            async move {
                if let Err(e) = event(&client, &identity, &r).await {
                    tracing::debug!(reason = r.reason, error = %e, "recording an event failed");
                }
            }
        })
        .await
}

fn tokio_stream_of<T: Send + 'static>(mut rx: mpsc::Receiver<T>) -> impl Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A core/v1 Event about the pod.
async fn event(client: &Client, identity: &str, r: &EventReq) -> Result<(), kube::Error> {
    let pod = &r.pod;
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let now = Timestamp::now();
    let ev = Event {
        metadata: ObjectMeta { name: Some(format!("{name}.{:x}", now.as_nanosecond())), namespace: Some(ns.clone()), ..Default::default() },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(name),
            namespace: Some(ns.clone()),
            uid: pod.metadata.uid.clone(),
            resource_version: pod.metadata.resource_version.clone(),
            ..Default::default()
        },
        reason: Some(r.reason.into()),
        message: Some(r.message.clone()),
        type_: Some(r.type_.into()),
        action: Some(r.action.into()),
        source: Some(EventSource { component: Some(SCHEDULER_NAME.into()), host: None }),
        reporting_component: Some(SCHEDULER_NAME.into()),
        reporting_instance: Some(identity.to_string()),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        count: Some(1),
        ..Default::default()
    };
    Api::<Event>::namespaced(client.clone(), &ns).create(&PostParams::default(), &ev).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, extra: serde_json::Value) -> Arc<Node> {
        let mut n = json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}, "conditions": [{"type": "Ready", "status": "True"}]}});
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            n[k] = v;
        }
        Arc::new(serde_json::from_value(n).expect("node"))
    }

    fn pod(spec: serde_json::Value) -> Pod {
        let mut s = json!({"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]});
        for (k, v) in spec.as_object().cloned().unwrap_or_default() {
            s[k] = v;
        }
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "d", "uid": "u"}, "spec": s})).expect("pod")
    }

    fn cache(nodes: Vec<Arc<Node>>) -> Cache {
        let mut c = Cache::default();
        for n in nodes {
            c.upsert_node(n);
        }
        c
    }

    /// A client whose requests are recorded (method, path, body) and answered with `{}`.
    type Requests = Arc<std::sync::Mutex<Vec<(String, String)>>>;

    fn recording_client() -> (Client, Requests) {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let svc = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let log = log.clone();
            async move {
                let what = format!("{} {}", req.method(), req.uri().path());
                let body = req.into_body().collect_bytes().await?;
                log.lock().unwrap().push((what, String::from_utf8_lossy(&body).into_owned()));
                Ok::<_, kube::Error>(http::Response::new(kube::client::Body::from(b"{}".to_vec())))
            }
        });
        (Client::new(svc, "default"), seen)
    }

    fn prio_pod(name: &str, priority: i32, cpu: &str, node: Option<&str>, nominated: Option<&str>) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "d", "uid": format!("uid-{name}")},
                "spec": {"priority": priority, "nodeName": node, "containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": cpu}}}]},
                "status": {"nominatedNodeName": nominated}
            }))
            .expect("pod"),
        )
    }

    async fn settle(seen: &std::sync::Mutex<Vec<(String, String)>>, want: usize) -> Vec<(String, String)> {
        for _ in 0..200 {
            if seen.lock().unwrap().len() >= want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seen.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn a_nominated_pod_that_preemption_can_no_longer_help_loses_its_nomination() {
        let (client, seen) = recording_client();
        let mut s = Scheduler::new(client, "test".into());
        s.cache.upsert_node(node("a", json!({})));
        // The node is full with a pod of higher priority: nothing to preempt.
        s.cache.update_pod(prio_pod("top", 5000, "4", Some("a"), None));
        let p = prio_pod("p", 100, "1", None, Some("a"));
        s.cache.nominated.insert(key(&p), ("a".into(), 100, PodInfo::of(&p)));
        let unfit = choose(&s.cache, &p, &mut 0).err().expect("unfit");
        let (msg, clear) = s.postfilter(&p, unfit);
        assert!(clear, "{msg}");
        assert!(!s.cache.nominated.contains_key(&key(&p)));
        // Without a nomination there is nothing to clear.
        let q = prio_pod("q", 100, "1", None, None);
        let unfit = choose(&s.cache, &q, &mut 0).err().expect("unfit");
        assert!(!s.postfilter(&q, unfit).1);
        assert!(seen.lock().unwrap().is_empty(), "no preemption requests");
    }

    #[tokio::test]
    async fn preempting_takes_the_nomination_of_lower_priority_pods_nominated_to_the_node() {
        let (client, seen) = recording_client();
        let mut s = Scheduler::new(client, "test".into());
        s.cache.upsert_node(node("a", json!({})));
        s.cache.update_pod(prio_pod("low", 0, "4", Some("a"), None));
        let mid = prio_pod("mid", 50, "2", None, Some("a"));
        s.pending.insert(key(&mid), mid.clone());
        s.cache.nominated.insert(key(&mid), ("a".into(), 50, PodInfo::of(&mid)));
        let top = prio_pod("top", 100, "4", None, None);
        let unfit = choose(&s.cache, &top, &mut 0).err().expect("unfit");
        let (_, clear) = s.postfilter(&top, unfit);
        assert!(!clear);
        assert_eq!(s.cache.nominated.get(&key(&top)).map(|n| n.0.as_str()), Some("a"));
        assert!(!s.cache.nominated.contains_key(&key(&mid)), "mid lost its nomination");
        assert!(s.queued.contains(&key(&mid)), "and is tried again");
        // Requests: mid's nomination cleared, top nominated, low's DisruptionTarget and deletion.
        let reqs = settle(&seen, 4).await;
        assert_eq!(reqs[0].0, "PATCH /api/v1/namespaces/d/pods/mid/status");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&reqs[0].1).unwrap(), json!({"status": {"nominatedNodeName": null}}));
        assert_eq!(reqs[1].0, "PATCH /api/v1/namespaces/d/pods/top/status");
        assert!(reqs.iter().any(|(w, _)| w == "DELETE /api/v1/namespaces/d/pods/low"), "{reqs:?}");
    }

    #[test]
    fn preferred_node_affinity_outweighs_resources() {
        let c = cache(vec![node("a", json!({})), node("b", json!({"metadata": {"name": "b", "labels": {"disk": "ssd"}}}))]);
        let p = pod(json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 5, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}}]}}}));
        for _ in 0..10 {
            assert_eq!(choose(&c, &p, &mut 0).ok().map(|c| c.node).as_deref(), Some("b"));
        }
    }

    #[test]
    fn prefer_no_schedule_taints_are_avoided_unless_tolerated() {
        let c = cache(vec![node("a", json!({"spec": {"taints": [{"key": "k", "effect": "PreferNoSchedule"}]}})), node("b", json!({}))]);
        for _ in 0..10 {
            assert_eq!(choose(&c, &pod(json!({})), &mut 0).ok().map(|c| c.node).as_deref(), Some("b"));
        }
    }

    #[test]
    fn the_emptier_node_wins_and_assumed_pods_count() {
        let mut c = cache(vec![node("a", json!({})), node("b", json!({}))]);
        let mut big = pod(json!({"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "3", "memory": "6Gi"}}}]}));
        big.metadata.name = Some("big".into());
        c.assume(Arc::new(big), "a");
        assert_eq!(choose(&c, &pod(json!({})), &mut 0).ok().map(|c| c.node).as_deref(), Some("b"));
        // 3.5 cpu fits only b now that 3 are assumed on a.
        let p = pod(json!({"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "3500m"}}}]}));
        assert_eq!(choose(&c, &p, &mut 0).ok().map(|c| c.node).as_deref(), Some("b"));
        let p = pod(json!({"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "5"}}}]}));
        let unfit = choose(&c, &p, &mut 0).err().expect("unfit");
        assert_eq!(unfit.resolvable, vec![0, 1]);
        assert_eq!(
            filter::fit_error_message(2, &unfit.failures),
            "0/2 nodes are available: 2 Insufficient cpu. preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod."
        );
    }

    #[test]
    fn room_nominated_to_a_preemptor_is_kept_from_lower_priority_pods() {
        let mut c = cache(vec![node("a", json!({}))]);
        let big = pod(json!({"priority": 100, "containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "3"}}}]}));
        c.nominated.insert("d/preemptor".into(), ("a".into(), 100, PodInfo::of(&big)));
        let small = pod(json!({"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "2"}}}]}));
        assert!(choose(&c, &small, &mut 0).is_err());
        let mut important = small.clone();
        important.spec.as_mut().expect("spec").priority = Some(200);
        assert!(choose(&c, &important, &mut 0).is_ok());
    }

    #[test]
    fn the_search_stops_after_enough_feasible_nodes_and_rotates() {
        let c = cache((0..1000).map(|i| node(&format!("n{i}"), json!({}))).collect());
        let mut start = 0;
        assert!(choose(&c, &pod(json!({})), &mut start).is_ok());
        // 1,000 nodes: 42% are searched, then the next search starts after them.
        assert_eq!(start, 420);
        assert!(choose(&c, &pod(json!({})), &mut start).is_ok());
        assert_eq!(start, 840);
        assert!(choose(&c, &pod(json!({})), &mut start).is_ok());
        assert_eq!(start, 260);
    }

    #[test]
    fn queue_orders_by_priority_then_age() {
        let q = |priority, created, seq| Queued { priority, created: std::cmp::Reverse(created), seq: std::cmp::Reverse(seq), key: String::new() };
        let mut h = BinaryHeap::from(vec![q(0, 5, 1), q(10, 9, 2), q(0, 1, 3)]);
        assert_eq!(h.pop().map(|x| x.priority), Some(10));
        assert_eq!(h.pop().map(|x| x.created.0), Some(1));
        assert_eq!(h.pop().map(|x| x.created.0), Some(5));
    }
}
