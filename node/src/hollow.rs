//! Hollow nodes at run time: N nodes in one process share one client, one Node reflector and one
//! pod controller (a single watch for all of them), so a process can carry thousands.
//!
//! Per node: register, then a heartbeat task renews the Lease every period and rewrites the
//! Node status when the stored one differs from ours or every STATUS_PERIOD. Pods bound to our
//! nodes are reconciled: reported Running; Job pods Succeeded after JOB_RUN_TIME; pods in
//! graceful deletion reported terminated and then deleted for good (the node's confirmation).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures::{future, FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Node, NodeStatus, Pod, PodStatus};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, ResourceExt};
use tokio::sync::{OnceCell, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::args::{Shape, HOLLOW_LABEL};
use crate::ipam::PodIps;
use crate::objects;

/// Node status is rewritten at least this often (kubelet: 5 min with Leases; shorter here so a
/// lost write is repaired sooner).
const STATUS_PERIOD: Duration = Duration::from_secs(60);
/// How long a Job's pod "runs".
const JOB_RUN_TIME: Duration = Duration::from_secs(1);
/// Writes in flight at once, whatever the number of nodes: bounds connections and server load.
const API_CONCURRENCY: usize = 32;
/// Pods reconciled at once.
const POD_CONCURRENCY: u16 = 32;
/// Exit code of a container stopped by SIGTERM (most do not trap it).
const SIGTERM_EXIT: i32 = 143;

pub(crate) struct Hollow {
    client: Client,
    shape: Shape,
    index: Arc<HashMap<String, usize>>,
    ips: Vec<Mutex<PodIps>>,
    node_uids: Vec<Mutex<Option<String>>>,
    api_slots: Semaphore,
    nodes: Store<Node>,
    pods: Store<Pod>,
    ips_seeded: OnceCell<()>,
    failures: Mutex<HashMap<String, u32>>,
    registered: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn is_status(e: &kube::Error, f: impl Fn(&kube::core::Status) -> bool) -> bool {
    matches!(e, kube::Error::Api(s) if f(s))
}

/// Exponential backoff with jitter: 250 ms doubling up to 30 s.
fn backoff_delay(attempt: u32) -> Duration {
    let base = Duration::from_millis(250).saturating_mul(1 << attempt.saturating_sub(1).min(7)).min(Duration::from_secs(30));
    base + base.mul_f64(rand::random::<f64>() * 0.25)
}

/// Watcher events for objects we do not care about are dropped before the cache: a process
/// holds only its own nodes' pods.
fn keep_event<K>(ev: &Event<K>, ours: impl Fn(&K) -> bool) -> bool {
    match ev {
        Event::Apply(o) | Event::InitApply(o) | Event::Delete(o) => ours(o),
        Event::Init | Event::InitDone => true,
    }
}

#[derive(Debug)]
struct ReconcileError(anyhow::Error);

impl std::fmt::Display for ReconcileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for ReconcileError {}

pub(crate) async fn run(client: Client, shape: Shape) -> Result<()> {
    let index: Arc<HashMap<String, usize>> = Arc::new(shape.names.iter().enumerate().map(|(i, n)| (n.clone(), i)).collect());
    let ips = (0..shape.names.len()).map(|i| PodIps::for_node(i).map(Mutex::new)).collect::<Result<Vec<_>>>()?;

    let (nodes, node_writer) = reflector::store::<Node>();
    let ours = index.clone();
    let node_events = watcher(Api::<Node>::all(client.clone()), watcher::Config::default().labels(&format!("{}={}", HOLLOW_LABEL.0, HOLLOW_LABEL.1)))
        .default_backoff()
        .modify(|n| n.managed_fields_mut().clear())
        .try_filter(move |ev| future::ready(keep_event(ev, |n: &Node| ours.contains_key(n.name_any().as_str()))))
        .reflect(node_writer);

    // One watch for all our nodes' pods: by name when there is one node, else every bound pod,
    // filtered here.
    let selector = match shape.names.as_slice() {
        [one] => format!("spec.nodeName={one}"),
        _ => "spec.nodeName!=".to_string(),
    };
    let (pods, pod_writer) = reflector::store::<Pod>();
    let ours = index.clone();
    let pod_events = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default().fields(&selector))
        .default_backoff()
        .modify(|p| p.managed_fields_mut().clear())
        .try_filter(move |ev| future::ready(keep_event(ev, |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_some_and(|n| ours.contains_key(n)))))
        .reflect(pod_writer)
        .applied_objects();

    let ctx = Arc::new(Hollow {
        client,
        node_uids: shape.names.iter().map(|_| Mutex::new(None)).collect(),
        shape,
        index,
        ips,
        api_slots: Semaphore::new(API_CONCURRENCY),
        nodes,
        pods: pods.clone(),
        ips_seeded: OnceCell::new(),
        failures: Mutex::new(HashMap::new()),
        registered: AtomicUsize::new(0),
    });

    let mut tasks = JoinSet::new();
    tasks.spawn(node_events.for_each(|r| {
        if let Err(e) = r {
            warn!(error = %e, "node watch failed; retrying");
        }
        future::ready(())
    }));
    let pod_controller = Controller::for_stream(pod_events, pods).with_config(controller::Config::default().concurrency(POD_CONCURRENCY));
    tasks.spawn(pod_controller.run(reconcile, error_policy, ctx.clone()).for_each(|r| {
        match r {
            Ok(_) => {}
            // Already logged by error_policy.
            Err(controller::Error::ReconcilerFailed(..)) => {}
            // A requeued pod that has since gone.
            Err(e @ controller::Error::ObjectNotFound(..)) => debug!(error = %e, "pod controller"),
            Err(e) => warn!(error = %e, "pod controller"),
        }
        future::ready(())
    }));
    tasks.spawn(sweep_loop(ctx.clone()));
    for i in 0..ctx.shape.names.len() {
        tasks.spawn(node_loop(ctx.clone(), i));
    }
    info!(nodes = ctx.shape.names.len(), first = %ctx.shape.names[0], "hollow nodes starting");
    // Every task runs forever; one ending is a bug worth stopping for.
    match tasks.join_next().await {
        Some(Err(e)) => Err(anyhow!(e).context("a hollow node task failed")),
        _ => bail!("a hollow node task stopped"),
    }
}

impl Hollow {
    /// Runs an API call within the process-wide limit of calls in flight.
    async fn call<T>(&self, f: impl std::future::Future<Output = kube::Result<T>>) -> kube::Result<T> {
        let _slot = self.api_slots.acquire().await.ok();
        f.await
    }

    // ----- nodes -----

    async fn register(&self, i: usize) -> Result<()> {
        let name = &self.shape.names[i];
        let api: Api<Node> = Api::all(self.client.clone());
        let node = objects::node_object(&self.shape, i, Timestamp::now());
        match self.call(api.create(&PostParams::default(), &node)).await {
            Ok(created) => {
                *lock(&self.node_uids[i]) = created.metadata.uid.clone();
                if created.status.as_ref().and_then(|s| s.conditions.as_ref()).is_none_or(|c| c.is_empty()) {
                    // The server dropped the status sent with the create.
                    self.write_node_status(name, None).await?;
                }
                debug!(node = %name, "registered node");
                self.note_registered();
            }
            Err(e) if is_status(&e, |s| s.is_already_exists()) => {
                let existing = self.call(api.get(name)).await.with_context(|| format!("reading existing node {name}"))?;
                let patch = objects::node_update_patch(&self.shape, i, &existing);
                let updated = self.call(api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))).await.with_context(|| format!("updating existing node {name}"))?;
                self.write_node_status(name, updated.status.as_ref()).await?;
                *lock(&self.node_uids[i]) = updated.metadata.uid.clone();
                debug!(node = %name, "updated existing node");
                self.note_registered();
            }
            Err(e) => return Err(e).with_context(|| format!("creating node {name}")),
        }
        Ok(())
    }

    /// One line when every node is registered, not one per node.
    fn note_registered(&self) {
        let n = self.registered.fetch_add(1, Ordering::Relaxed) + 1;
        if n == self.shape.names.len() {
            info!(nodes = n, "all hollow nodes registered");
        }
    }

    async fn write_node_status(&self, name: &str, old: Option<&NodeStatus>) -> Result<()> {
        let api: Api<Node> = Api::all(self.client.clone());
        let status = objects::node_status(&self.shape, name, old, Timestamp::now());
        let patch = serde_json::json!({ "status": status });
        self.call(api.patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))).await.with_context(|| format!("writing status of node {name}"))?;
        Ok(())
    }

    /// Renews (or creates) the node's Lease, retrying briefly as kubelet does.
    async fn renew_lease(&self, i: usize) -> Result<()> {
        let name = &self.shape.names[i];
        let api: Api<Lease> = Api::namespaced(self.client.clone(), objects::LEASE_NAMESPACE);
        let mut attempt = 0;
        loop {
            let now = Timestamp::now();
            let err = match self.call(api.patch(name, &PatchParams::default(), &Patch::Merge(objects::lease_renew_patch(name, now)))).await {
                Ok(_) => return Ok(()),
                Err(e) if is_status(&e, |s| s.is_not_found()) => {
                    let uid = lock(&self.node_uids[i]).clone();
                    match self.call(api.create(&PostParams::default(), &objects::lease_object(name, uid.as_deref(), now))).await {
                        Ok(_) => return Ok(()),
                        Err(e) if is_status(&e, |s| s.is_already_exists()) => return Ok(()),
                        Err(e) => e,
                    }
                }
                Err(e) => e,
            };
            attempt += 1;
            if attempt >= 5 {
                return Err(err).with_context(|| format!("renewing lease of node {name}"));
            }
            tokio::time::sleep(Duration::from_millis(200) * (1 << attempt)).await;
        }
    }

    /// Rewrites the Node status when it is due or the stored one differs from ours, and
    /// registers the node again if it was deleted.
    async fn check_status(&self, i: usize, last_write: &mut Instant, missing_ticks: &mut u32) -> Result<()> {
        let name = &self.shape.names[i];
        let cached = self.nodes.get(&ObjectRef::new(name));
        match cached {
            // Twice in a row, so a cache that lags our own create does not count.
            None if self.nodes.wait_until_ready().now_or_never().is_some() => {
                *missing_ticks += 1;
                if *missing_ticks >= 2 {
                    info!(node = %name, "node object is gone; registering again");
                    self.registered.fetch_sub(1, Ordering::Relaxed);
                    self.register(i).await?;
                    *last_write = Instant::now();
                    *missing_ticks = 0;
                }
            }
            None => {}
            Some(node) => {
                *missing_ticks = 0;
                let changed = !objects::node_status_conforms(&self.shape, &node);
                if changed || last_write.elapsed() >= STATUS_PERIOD {
                    if changed {
                        info!(node = %name, "node status differs from ours; reporting it again");
                    }
                    self.write_node_status(name, node.status.as_ref()).await?;
                    *last_write = Instant::now();
                }
            }
        }
        Ok(())
    }

    // ----- pods -----

    /// Before the first pod is handled: claim the IPs pods already have (a restarted process),
    /// so that no new pod is given one of them. The controller starts once the cache is ready.
    async fn seed_ips(&self) {
        self.ips_seeded
            .get_or_init(|| async {
                let _ = self.pods.wait_until_ready().await;
                let mut n = 0;
                for p in self.pods.state() {
                    if objects::is_terminal(&p) {
                        continue;
                    }
                    let node = p.spec.as_ref().and_then(|s| s.node_name.as_deref()).and_then(|n| self.index.get(n));
                    if let (Some(i), Some(uid), Some(ip)) = (node, p.metadata.uid.as_deref(), p.status.as_ref().and_then(|s| s.pod_ip.as_deref())) {
                        lock(&self.ips[*i]).claim(uid, ip);
                        n += 1;
                    }
                }
                debug!(pods = n, "claimed existing pod IPs");
            })
            .await;
    }

    fn release_ip(&self, i: usize, uid: &str) {
        lock(&self.ips[i]).release(uid);
    }

    /// Writes pods/status. A pod gone or replaced (uid precondition) needs nothing more.
    async fn write_pod_status(&self, api: &Api<Pod>, pod: &Pod, status: &PodStatus) -> Result<()> {
        let name = pod.name_any();
        let patch = objects::pod_status_patch(pod, status);
        match self.call(api.patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))).await {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, |s| s.is_not_found() || s.is_conflict()) => {
                debug!(pod = %name, "pod gone or replaced before its status was written");
                Ok(())
            }
            Err(e) => Err(e).with_context(|| format!("writing status of pod {}/{name}", pod.namespace().unwrap_or_default())),
        }
    }

    async fn reconcile_pod(&self, pod: &Pod) -> Result<Action> {
        let Some(uid) = pod.metadata.uid.as_deref() else { return Ok(Action::await_change()) };
        let Some(&i) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).and_then(|n| self.index.get(n)) else { return Ok(Action::await_change()) };
        let Some(ns) = pod.namespace() else { return Ok(Action::await_change()) };
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let now = Timestamp::now();

        if pod.metadata.deletion_timestamp.is_some() {
            self.confirm_deletion(&api, pod, uid).await?;
            self.release_ip(i, uid);
            return Ok(Action::await_change());
        }
        if objects::is_terminal(pod) {
            self.release_ip(i, uid);
            return Ok(Action::await_change());
        }
        let current_ip = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref());
        // The node's pod CIDR from node IPAM, when it has one we can use.
        let cidr = self.nodes.get(&ObjectRef::new(&self.shape.names[i])).and_then(|n| n.spec.as_ref().and_then(|s| s.pod_cidr.clone()));
        let ip = {
            let mut ips = lock(&self.ips[i]);
            if let Some(c) = cidr {
                ips.adopt_cidr(&c);
            }
            ips.ip_of(uid, current_ip)?
        };
        let job = objects::is_job_pod(pod);
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        if job && running {
            let ran = objects::start_time(pod).map(|t| Duration::from_millis(now.as_millisecond().saturating_sub(t.as_millisecond()).max(0) as u64));
            match ran {
                Some(ran) if ran < JOB_RUN_TIME => {
                    let want = objects::running_status(pod, &ip, now);
                    if !objects::status_conforms(pod, &want) {
                        self.write_pod_status(&api, pod, &want).await?;
                    }
                    return Ok(Action::requeue(JOB_RUN_TIME - ran));
                }
                _ => {
                    self.write_pod_status(&api, pod, &objects::finished_status(pod, 0, now)).await?;
                    self.release_ip(i, uid);
                    debug!(pod = %pod.name_any(), "job pod completed");
                    return Ok(Action::await_change());
                }
            }
        }
        let want = objects::running_status(pod, &ip, now);
        if !objects::status_conforms(pod, &want) {
            self.write_pod_status(&api, pod, &want).await?;
            debug!(pod = %pod.name_any(), node = %self.shape.names[i], %ip, "pod running");
        }
        Ok(if job { Action::requeue(JOB_RUN_TIME) } else { Action::await_change() })
    }

    /// Graceful deletion: our containers "stop" at once; report them terminated, then delete
    /// the pod with grace 0 (only the node may), guarded by its uid.
    /// kubelet's "Killing" events, one per container it stops (best effort).
    async fn killing_events(&self, pod: &Pod) {
        let ns = pod.namespace().unwrap_or_default();
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let api: Api<CoreEvent> = Api::namespaced(self.client.clone(), &ns);
        for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
            let now = Timestamp::now();
            let ev = objects::pod_event(pod, "Normal", "Killing", &format!("Stopping container {}", c.name), node.as_deref(), now, &format!("spec.containers{{{}}}", c.name));
            if let Err(e) = self.call(api.create(&PostParams::default(), &ev)).await {
                debug!(pod = %pod.name_any(), error = %e, "could not record Killing event");
            }
        }
    }

    async fn confirm_deletion(&self, api: &Api<Pod>, pod: &Pod, uid: &str) -> Result<()> {
        let name = pod.name_any();
        let succeeded = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded");
        let want = objects::finished_status(pod, if succeeded { 0 } else { SIGTERM_EXIT }, Timestamp::now());
        if !objects::status_conforms(pod, &want) {
            if !succeeded {
                self.killing_events(pod).await;
            }
            self.write_pod_status(api, pod, &want).await?;
        }
        // Grace 0 already: the pod only waits for its finalizers.
        if pod.metadata.deletion_grace_period_seconds == Some(0) {
            return Ok(());
        }
        let dp = DeleteParams { grace_period_seconds: Some(0), preconditions: Some(Preconditions { uid: Some(uid.to_string()), resource_version: None }), ..Default::default() };
        match self.call(api.delete(&name, &dp)).await {
            Ok(_) => {
                debug!(pod = %name, "pod deleted");
                Ok(())
            }
            Err(e) if is_status(&e, |s| s.is_not_found() || s.is_conflict()) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("deleting pod {}/{name}", pod.namespace().unwrap_or_default())),
        }
    }
}

async fn reconcile(pod: Arc<Pod>, ctx: Arc<Hollow>) -> Result<Action, ReconcileError> {
    ctx.seed_ips().await;
    let r = ctx.reconcile_pod(&pod).await;
    if r.is_ok() {
        if let Some(uid) = pod.metadata.uid.as_deref() {
            lock(&ctx.failures).remove(uid);
        }
    }
    r.map_err(ReconcileError)
}

fn error_policy(pod: Arc<Pod>, err: &ReconcileError, ctx: Arc<Hollow>) -> Action {
    let attempt = {
        let mut f = lock(&ctx.failures);
        let n = f.entry(pod.metadata.uid.clone().unwrap_or_default()).or_insert(0);
        *n += 1;
        *n
    };
    let delay = backoff_delay(attempt);
    warn!(pod = %format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()), attempt, error = %err, retry_in = ?delay, "pod update failed");
    Action::requeue(delay)
}

/// Registers node `i`, then heartbeats for ever.
async fn node_loop(ctx: Arc<Hollow>, i: usize) {
    let name = ctx.shape.names[i].clone();
    let mut attempt = 0;
    while let Err(e) = ctx.register(i).await {
        attempt += 1;
        let delay = backoff_delay(attempt);
        warn!(node = %name, error = %format!("{e:#}"), retry_in = ?delay, "node registration failed");
        tokio::time::sleep(delay).await;
    }
    if let Err(e) = ctx.renew_lease(i).await {
        warn!(node = %name, error = %format!("{e:#}"), "lease renewal failed");
    }
    // Spread the heartbeats of many nodes over the period.
    let period = ctx.shape.heartbeat;
    let offset = period.mul_f64(i as f64 / ctx.shape.names.len() as f64);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period + offset, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_write = Instant::now();
    let mut missing_ticks = 0;
    loop {
        tick.tick().await;
        if let Err(e) = ctx.renew_lease(i).await {
            warn!(node = %name, error = %format!("{e:#}"), "lease renewal failed");
        }
        if let Err(e) = ctx.check_status(i, &mut last_write, &mut missing_ticks).await {
            warn!(node = %name, error = %format!("{e:#}"), "node status update failed");
        }
    }
}

/// Frees the IPs (and retry counters) of pods that are gone, finished or being deleted: the
/// controller is not told about pods deleted outright.
async fn sweep_loop(ctx: Arc<Hollow>) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if ctx.pods.wait_until_ready().now_or_never().is_none() {
            continue;
        }
        let state = ctx.pods.state();
        let all: HashSet<&str> = state.iter().filter_map(|p| p.metadata.uid.as_deref()).collect();
        let live: HashSet<&str> = state.iter().filter(|p| !objects::is_terminal(p) && p.metadata.deletion_timestamp.is_none()).filter_map(|p| p.metadata.uid.as_deref()).collect();
        for m in &ctx.ips {
            lock(m).retain(|u| live.contains(u));
        }
        lock(&ctx.failures).retain(|u, _| all.contains(u.as_str()));
    }
}
