//! The scheduling loop: reflectors of Nodes and Pods, a pass over pending pods whenever
//! something changed, and upstream-like backoff for pods that did not fit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Event, EventSource, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::filter::{self, Failure, NodeUsage};

pub const SCHEDULER_NAME: &str = "default-scheduler";

/// upstream's podInitialBackoffDuration / podMaxBackoffDuration.
const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// upstream's podMaxInUnschedulablePodsDuration: retry even without a relevant change.
const MAX_UNSCHEDULABLE: Duration = Duration::from_secs(300);
/// How long a bound pod counts as assumed while its binding has not been observed.
const ASSUME_TTL: Duration = Duration::from_secs(30);
/// Repeat an unchanged FailedScheduling event at most this often.
const EVENT_REPEAT: Duration = Duration::from_secs(60);

/// What a watch event means for pods waiting on a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    /// Nodes or assigned pods changed: capacity may have appeared.
    Cluster,
    /// An unassigned pod changed (new pod, or one of ours updated).
    Pending,
}

struct Assumed {
    uid: String,
    node: String,
    at: Instant,
}

struct Unschedulable {
    uid: String,
    attempts: u32,
    last: Instant,
    /// A relevant change happened since the last attempt: retry once the backoff expired.
    moved: bool,
    fingerprint: String,
    event_message: String,
    event_at: Option<Instant>,
}

impl Unschedulable {
    fn backoff(&self) -> Duration {
        let exp = self.attempts.saturating_sub(1).min(16);
        (INITIAL_BACKOFF * 2u32.pow(exp)).min(MAX_BACKOFF)
    }

    fn ready_at(&self) -> Instant {
        if self.moved {
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

pub struct Scheduler {
    client: Client,
    identity: String,
    assumed: HashMap<String, Assumed>,
    unschedulable: HashMap<String, Unschedulable>,
}

fn key(pod: &Pod) -> String {
    format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or(""), pod.metadata.name.as_deref().unwrap_or(""))
}

fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).filter(|n| !n.is_empty())
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

/// Unassigned, for us, not being deleted and not gated.
fn is_pending(pod: &Pod) -> bool {
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

/// Feeds one reflector's events to the scheduling loop.
async fn drive<K, S>(stream: S, tx: mpsc::UnboundedSender<Change>, classify: fn(&watcher::Event<K>) -> Option<Change>)
where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(ev) => {
                if let Some(c) = classify(&ev) {
                    if tx.send(c).is_err() {
                        return;
                    }
                }
            }
            // default_backoff() retries; this is only worth a log line.
            Err(e) => tracing::warn!(error = %e, "scheduler watch failed"),
        }
    }
}

fn classify_node(_: &watcher::Event<Node>) -> Option<Change> {
    Some(Change::Cluster)
}

fn classify_pod(ev: &watcher::Event<Pod>) -> Option<Change> {
    match ev {
        watcher::Event::Apply(p) | watcher::Event::Delete(p) if node_name(p).is_none() => Some(Change::Pending),
        watcher::Event::InitApply(_) => None,
        _ => Some(Change::Cluster),
    }
}

impl Scheduler {
    pub fn new(client: Client, identity: String) -> Self {
        Scheduler { client, identity, assumed: HashMap::new(), unschedulable: HashMap::new() }
    }

    /// Schedules until `lost` turns true (Ok) or a write is fenced (Err): both end this term.
    pub async fn run(mut self, mut lost: watch::Receiver<bool>) -> anyhow::Result<()> {
        let (node_store, node_writer) = reflector::store::<Node>();
        let (pod_store, pod_writer) = reflector::store::<Pod>();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let nodes = reflector::reflector(node_writer, watcher(Api::<Node>::all(self.client.clone()), watcher::Config::default()).default_backoff());
        let pods = reflector::reflector(pod_writer, watcher(Api::<Pod>::all(self.client.clone()), watcher::Config::default()).default_backoff());
        let _tasks = [AbortOnDrop(tokio::spawn(drive(nodes, tx.clone(), classify_node))), AbortOnDrop(tokio::spawn(drive(pods, tx, classify_pod)))];
        tokio::select! {
            r = async { node_store.wait_until_ready().await?; pod_store.wait_until_ready().await } => r.context("scheduler reflectors stopped")?,
            _ = lost.wait_for(|l| *l) => return Ok(()),
        }
        tracing::info!(identity = %self.identity, "scheduler started");
        loop {
            self.pass(&node_store, &pod_store, &lost).await?;
            let wake = self.unschedulable.values().map(Unschedulable::ready_at).min().map(|w| w.max(Instant::now() + Duration::from_millis(10)));
            tokio::select! {
                _ = lost.wait_for(|l| *l) => return Ok(()),
                ch = rx.recv() => {
                    let Some(ch) = ch else { bail!("scheduler watches ended") };
                    self.note(ch);
                    while let Ok(ch) = rx.try_recv() {
                        self.note(ch);
                    }
                }
                _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {}
            }
        }
    }

    fn note(&mut self, ch: Change) {
        if ch == Change::Cluster {
            for u in self.unschedulable.values_mut() {
                u.moved = true;
            }
        }
    }

    /// One pass over the pending pods, by priority then age.
    async fn pass(&mut self, node_store: &Store<Node>, pod_store: &Store<Pod>, lost: &watch::Receiver<bool>) -> anyhow::Result<()> {
        let pods = pod_store.state();
        let by_key: HashMap<String, &Arc<Pod>> = pods.iter().map(|p| (key(p), p)).collect();
        let uid = |p: &Pod| p.metadata.uid.clone().unwrap_or_default();
        // An assumption ends once the store shows the binding (or the pod is gone).
        self.assumed.retain(|k, a| by_key.get(k).is_some_and(|p| uid(p) == a.uid && node_name(p).is_none()) && a.at.elapsed() < ASSUME_TTL);
        let mut pending: Vec<&Arc<Pod>> = pods.iter().filter(|p| is_pending(p) && !self.assumed.contains_key(&key(p))).collect();
        self.unschedulable.retain(|k, u| by_key.get(k).is_some_and(|p| is_pending(p) && uid(p) == u.uid));
        if pending.is_empty() {
            return Ok(());
        }
        pending.sort_by_key(|p| (std::cmp::Reverse(p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)), p.metadata.creation_timestamp.as_ref().map(|t| t.0)));

        let nodes = node_store.state();
        let mut usage: HashMap<String, NodeUsage> = HashMap::new();
        for p in &pods {
            if let Some(n) = node_name(p) {
                if !is_terminal(p) {
                    usage.entry(n.to_string()).or_default().add(p);
                }
            }
        }
        for (k, a) in &self.assumed {
            if let Some(p) = by_key.get(k) {
                usage.entry(a.node.clone()).or_default().add(p);
            }
        }

        let now = Instant::now();
        for pod in pending {
            if *lost.borrow() {
                return Ok(());
            }
            let k = key(pod);
            if let Some(u) = self.unschedulable.get_mut(&k) {
                if u.fingerprint != fingerprint(pod) {
                    u.moved = true;
                }
                if u.ready_at() > now {
                    continue;
                }
            }
            let empty = NodeUsage::default();
            let mut feasible: Vec<(&Arc<Node>, i64)> = Vec::new();
            let mut failures: Vec<Failure> = Vec::new();
            for node in &nodes {
                let u = node.metadata.name.as_ref().and_then(|n| usage.get(n)).unwrap_or(&empty);
                match filter::filter(pod, node, u) {
                    Ok(()) => feasible.push((node, filter::score(pod, node, u))),
                    Err(f) => failures.push(f),
                }
            }
            let Some(best) = feasible.iter().map(|(_, s)| *s).max() else {
                let msg = filter::fit_error_message(nodes.len(), &failures);
                self.unschedulable_pod(pod, &msg).await?;
                continue;
            };
            // Ties: pick at random so equal nodes share the load.
            let top: Vec<&Arc<Node>> = feasible.iter().filter(|(_, s)| *s == best).map(|(n, _)| *n).collect();
            let node = top[rand::random_range(0..top.len())];
            let Some(node_name) = node.metadata.name.clone() else { continue };
            match self.bind(pod, &node_name).await {
                Ok(()) => {
                    tracing::info!(pod = %k, node = %node_name, "scheduled");
                    self.assumed.insert(k.clone(), Assumed { uid: uid(pod), node: node_name.clone(), at: Instant::now() });
                    self.unschedulable.remove(&k);
                    usage.entry(node_name.clone()).or_default().add(pod);
                    let msg = format!("Successfully assigned {k} to {node_name}");
                    self.event(pod, "Normal", "Scheduled", "Binding", &msg).await?;
                }
                Err(e) if is_fenced(&e) => return Err(e).context("binding was fenced: leadership lost"),
                Err(e) => {
                    // A conflict means the pod changed (bound elsewhere, deleted): the watch
                    // will tell; either way retry after a backoff, not at once.
                    if is_conflict(&e) {
                        tracing::debug!(pod = %k, error = %e, "pod changed under the scheduler");
                    } else {
                        tracing::warn!(pod = %k, node = %node_name, error = %e, "binding failed");
                    }
                    let u = self.entry(pod);
                    u.attempts += 1;
                    u.last = Instant::now();
                    u.moved = true;
                }
            }
        }
        Ok(())
    }

    fn entry(&mut self, pod: &Pod) -> &mut Unschedulable {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        self.unschedulable.entry(key(pod)).or_insert_with(|| Unschedulable {
            uid,
            attempts: 0,
            last: Instant::now(),
            moved: false,
            fingerprint: fingerprint(pod),
            event_message: String::new(),
            event_at: None,
        })
    }

    /// Records the failure: backoff state, the PodScheduled condition, a FailedScheduling event.
    async fn unschedulable_pod(&mut self, pod: &Pod, msg: &str) -> anyhow::Result<()> {
        let k = key(pod);
        tracing::debug!(pod = %k, message = %msg, "unschedulable");
        let u = self.entry(pod);
        u.attempts += 1;
        u.last = Instant::now();
        u.moved = false;
        u.fingerprint = fingerprint(pod);
        let repeat = u.event_message != msg || u.event_at.is_none_or(|t| t.elapsed() >= EVENT_REPEAT);

        let current = pod.status.as_ref().and_then(|s| s.conditions.as_ref()).and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"));
        let same = current.is_some_and(|c| c.status == "False" && c.reason.as_deref() == Some("Unschedulable") && c.message.as_deref() == Some(msg));
        if !same {
            let (ns, name) = (pod.metadata.namespace.as_deref().unwrap_or(""), pod.metadata.name.as_deref().unwrap_or(""));
            let patch = json!({"status": {"conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": msg,
                "lastProbeTime": null, "lastTransitionTime": Time(Timestamp::now()),
            }]}});
            let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
            match api.patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch)).await {
                Ok(_) => {}
                Err(e) if is_fenced(&e) => return Err(e).context("status update was fenced: leadership lost"),
                Err(e) => tracing::warn!(pod = %k, error = %e, "setting PodScheduled=False failed"),
            }
        }
        if repeat {
            self.event(pod, "Warning", "FailedScheduling", "Scheduling", msg).await?;
            let u = self.entry(pod);
            u.event_message = msg.to_string();
            u.event_at = Some(Instant::now());
        }
        Ok(())
    }

    /// POST pods/NAME/binding, with the pod's UID as precondition.
    async fn bind(&self, pod: &Pod, node: &str) -> Result<(), kube::Error> {
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
        self.client.request::<serde_json::Value>(req).await.map(|_| ())
    }

    /// A core/v1 Event about the pod. Failing to record one is logged, unless it was fenced.
    async fn event(&self, pod: &Pod, type_: &str, reason: &str, action: &str, msg: &str) -> anyhow::Result<()> {
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
            reason: Some(reason.into()),
            message: Some(msg.into()),
            type_: Some(type_.into()),
            action: Some(action.into()),
            source: Some(EventSource { component: Some(SCHEDULER_NAME.into()), host: None }),
            reporting_component: Some(SCHEDULER_NAME.into()),
            reporting_instance: Some(self.identity.clone()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            count: Some(1),
            ..Default::default()
        };
        match Api::<Event>::namespaced(self.client.clone(), &ns).create(&PostParams::default(), &ev).await {
            Ok(_) => Ok(()),
            Err(e) if is_fenced(&e) => Err(e).context("event was fenced: leadership lost"),
            Err(e) => {
                tracing::warn!(reason, error = %e, "recording an event failed");
                Ok(())
            }
        }
    }
}
