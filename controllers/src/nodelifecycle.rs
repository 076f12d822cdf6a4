//! Node lifecycle controller (upstream pkg/controller/nodelifecycle).
//!
//! Every --node-monitor-period it looks at each Node and its heartbeat Lease (namespace
//! kube-node-lease): a node whose Lease and status have not moved for
//! --node-monitor-grace-period gets its conditions set to Unknown. Nodes whose Ready condition
//! is False or Unknown get the NoExecute taint node.kubernetes.io/not-ready or
//! node.kubernetes.io/unreachable (which the taint eviction controller acts on), at most
//! --node-eviction-rate nodes per second per zone, fewer in unhealthy zones and none at all
//! while every node of the cluster is down ("full disruption": more likely the control plane's
//! network than all nodes). Pods on such nodes get their Ready condition set False.
//!
//! A second, per-node reconciler keeps the NoSchedule taints that mirror conditions
//! (TaintNodesByCondition) and spec.unschedulable (`kubectl cordon`).
//!
//! Every write is a compare-and-swap on the resourceVersion of the object as cached, so a node's
//! own newer status is never overwritten; a conflict is retried at the next pass.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{Stream, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeStatus, Pod, PodCondition, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::NodeSettings;

const COMPONENT: &str = "node-controller";
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
const NO_EXECUTE: &str = "NoExecute";
const NO_SCHEDULE: &str = "NoSchedule";

/// Conditions a node's kubelet reports that go Unknown with Ready.
const WATCHED_CONDITIONS: [&str; 4] = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];

/// Condition → NoSchedule taint (upstream nodeConditionToTaintKeyStatusMap).
const CONDITION_TAINTS: [(&str, &str, &str); 6] = [
    ("Ready", "False", TAINT_NOT_READY),
    ("Ready", "Unknown", TAINT_UNREACHABLE),
    ("MemoryPressure", "True", "node.kubernetes.io/memory-pressure"),
    ("DiskPressure", "True", "node.kubernetes.io/disk-pressure"),
    ("NetworkUnavailable", "True", "node.kubernetes.io/network-unavailable"),
    ("PIDPressure", "True", "node.kubernetes.io/pid-pressure"),
];

/// A reflector over `api` (managedFields dropped) and the future that keeps it filled.
pub(crate) fn reflect<K>(api: Api<K>, cfg: watcher::Config) -> (Store<K>, impl std::future::Future<Output = ()>)
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let stream = watcher::watcher(api, cfg).default_backoff().modify(|o| o.managed_fields_mut().clear()).reflect(writer);
    (store, drain_watch(stream))
}

async fn drain_watch<T, S: Stream<Item = Result<T, watcher::Error>>>(stream: S) {
    stream
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "watch failed; retrying");
            }
        })
        .await
}


pub async fn run(client: Client, settings: Arc<NodeSettings>, inf: Arc<crate::informer::Informers>) -> anyhow::Result<()> {
    let (nodes, pods) = (inf.nodes.store(), inf.pods.store());
    inf.nodes.wait_ready().await?;
    inf.pods.wait_ready().await?;
    let (leases, leases_fut) = reflect(Api::<Lease>::namespaced(client.clone(), LEASE_NAMESPACE), watcher::Config::default());
    let noschedule = Controller::for_shared_stream(inf.nodes.subscribe_applied(), inf.nodes.store()).run(reconcile_noschedule, crate::util::error_policy, Arc::new(client.clone()));
    tokio::select! {
        _ = leases_fut => Ok(()),
        _ = crate::util::drain("node-taints", noschedule) => Ok(()),
        r = monitor_loop(client, settings, nodes, leases, pods) => r,
    }
}

async fn monitor_loop(client: Client, settings: Arc<NodeSettings>, nodes: Store<Node>, leases: Store<Lease>, pods: Store<Pod>) -> anyhow::Result<()> {
    // The shared node and pod caches are ready (see `run`).
    leases.wait_until_ready().await.context("lease cache")?;
    let mut m = Monitor::default();
    let mut tick = tokio::time::interval(settings.monitor_period.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        m.pass(&client, &settings, &nodes, &leases, &pods).await;
    }
}

/// What the controller remembers about a node between passes (upstream nodeHealthData).
struct Health {
    /// When we last saw the node alive: a Lease renewal or a new status.
    probe: Instant,
    /// The Ready condition's (status, lastHeartbeatTime, lastTransitionTime) as last seen.
    ready_seen: Option<(String, Option<Time>, Option<Time>)>,
    lease_renew: Option<MicroTime>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZoneState {
    Normal,
    PartialDisruption,
    FullDisruption,
}

/// A token bucket with a burst of one (client-go's flowcontrol rate limiter as the node
/// controller configures it).
#[derive(Debug)]
pub struct Bucket {
    qps: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(qps: f64, now: Instant) -> Bucket {
        Bucket { qps, tokens: 1.0, last: now }
    }

    pub fn try_accept(&mut self, now: Instant) -> bool {
        if self.qps <= 0.0 {
            return false;
        }
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.qps).min(1.0);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Default)]
struct Monitor {
    health: HashMap<String, Health>,
    /// Nodes waiting for a NoExecute taint, per zone, in the order they went down.
    queues: HashMap<String, VecDeque<String>>,
    buckets: HashMap<String, Bucket>,
    zone_states: HashMap<String, ZoneState>,
    /// Every node of every zone is down: no NoExecute taints at all.
    full_disruption: bool,
}

/// The zone a node belongs to for eviction rate limiting (upstream GetZoneKey: region and zone).
pub fn zone_key(node: &Node) -> String {
    let l = node.labels();
    let get = |a: &str, b: &str| l.get(a).or_else(|| l.get(b)).cloned().unwrap_or_default();
    let region = get("topology.kubernetes.io/region", "failure-domain.beta.kubernetes.io/region");
    let zone = get("topology.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/zone");
    if region.is_empty() && zone.is_empty() {
        String::new()
    } else {
        format!("{region}:\x00:{zone}")
    }
}

/// Upstream ComputeZoneState: no ready node at all is a full disruption; more than two not
/// ready and at least `threshold` of them a partial one.
pub fn zone_state(ready: usize, not_ready: usize, threshold: f64) -> ZoneState {
    if ready == 0 && not_ready > 0 {
        ZoneState::FullDisruption
    } else if not_ready > 2 && not_ready as f64 / (ready + not_ready) as f64 >= threshold {
        ZoneState::PartialDisruption
    } else {
        ZoneState::Normal
    }
}

/// The eviction rate of a zone in `state` with `size` nodes.
pub fn zone_rate(settings: &NodeSettings, state: ZoneState, size: usize) -> f64 {
    match state {
        ZoneState::Normal | ZoneState::FullDisruption => settings.eviction_rate,
        ZoneState::PartialDisruption if size > settings.large_cluster_size_threshold => settings.secondary_eviction_rate,
        ZoneState::PartialDisruption => 0.0,
    }
}

pub fn condition<'a>(node: &'a Node, type_: &str) -> Option<&'a NodeCondition> {
    node.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == type_)
}

/// Ready's status: "True", "False" or "Unknown" (a node without one is Unknown).
pub fn ready_status(node: &Node) -> &str {
    condition(node, "Ready").map(|c| c.status.as_str()).unwrap_or("Unknown")
}

/// The status with every watched condition Unknown, or None when they already are (upstream
/// tryUpdateNodeHealth once the grace period is over).
pub fn unknown_status(node: &Node, now: &Time) -> Option<NodeStatus> {
    let mut status = node.status.clone().unwrap_or_default();
    let mut conds = status.conditions.take().unwrap_or_default();
    let created = node.metadata.creation_timestamp.clone().unwrap_or_else(|| now.clone());
    let mut changed = false;
    for t in WATCHED_CONDITIONS {
        match conds.iter_mut().find(|c| c.type_ == t) {
            Some(c) if c.status == "Unknown" => {}
            Some(c) => {
                c.status = "Unknown".into();
                c.reason = Some("NodeStatusUnknown".into());
                c.message = Some("Kubelet stopped posting node status.".into());
                c.last_transition_time = Some(now.clone());
                changed = true;
            }
            None => {
                conds.push(NodeCondition {
                    type_: t.into(),
                    status: "Unknown".into(),
                    reason: Some("NodeStatusNeverUpdated".into()),
                    message: Some("Kubelet never posted node status.".into()),
                    last_heartbeat_time: Some(created.clone()),
                    last_transition_time: Some(now.clone()),
                });
                changed = true;
            }
        }
    }
    status.conditions = Some(conds);
    changed.then_some(status)
}

fn has_taint(node: &Node, key: &str, effect: &str) -> bool {
    taints(node).iter().any(|t| t.key == key && t.effect == effect)
}

pub fn taints(node: &Node) -> &[Taint] {
    node.spec.as_ref().and_then(|s| s.taints.as_deref()).unwrap_or_default()
}

/// `current` without the (key, effect) pairs in `remove`, plus `add` (stamped with `now`)
/// where not already present; None when nothing changes (upstream SwapNodeControllerTaint).
pub fn swap_taints(current: &[Taint], add: &[(&str, &str)], remove: &[(&str, &str)], now: &Time) -> Option<Vec<Taint>> {
    let mut out: Vec<Taint> = current.iter().filter(|t| !remove.iter().any(|(k, e)| t.key == *k && t.effect == *e)).cloned().collect();
    for (k, e) in add {
        if !out.iter().any(|t| t.key == *k && t.effect == *e) {
            out.push(Taint { key: k.to_string(), effect: e.to_string(), value: None, time_added: Some(now.clone()) });
        }
    }
    (out != current).then_some(out)
}

/// Writes `taints` on the node, guarded by the cached resourceVersion.
pub(crate) async fn write_taints(client: &Client, node: &Node, taints: Vec<Taint>) -> anyhow::Result<()> {
    let name = node.name_any();
    let taints = if taints.is_empty() { serde_json::Value::Null } else { json!(taints) };
    let patch = json!({"metadata": {"resourceVersion": node.metadata.resource_version}, "spec": {"taints": taints}});
    Api::<Node>::all(client.clone()).patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await.with_context(|| format!("update taints of node {name}"))?;
    Ok(())
}

async fn update_taints(client: &Client, node: &Node, add: &[(&str, &str)], remove: &[(&str, &str)]) -> bool {
    let Some(new) = swap_taints(taints(node), add, remove, &crate::util::now()) else { return true };
    match write_taints(client, node, new).await {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(node = %node.name_any(), error = %format!("{e:#}"), "taint update failed; retrying at the next pass");
            false
        }
    }
}

impl Monitor {
    async fn pass(&mut self, client: &Client, settings: &NodeSettings, nodes: &Store<Node>, leases: &Store<Lease>, pods: &Store<Pod>) {
        let now = Instant::now();
        let all = nodes.state();
        let names: HashSet<String> = all.iter().map(|n| n.name_any()).collect();

        // Nodes that appeared or went away.
        let gone: Vec<String> = self.health.keys().filter(|n| !names.contains(*n)).cloned().collect();
        for name in gone {
            self.health.remove(&name);
            for q in self.queues.values_mut() {
                q.retain(|n| n != &name);
            }
            tracing::info!(node = %name, "removing node from the node controller");
            let gone_node = Node { metadata: kube::api::ObjectMeta { name: Some(name.clone()), ..Default::default() }, ..Default::default() };
            crate::events::normal(client, COMPONENT, &gone_node, "RemovingNode", format!("Node {name} event: Removing Node {name} from Controller")).await;
        }

        let mut current: Vec<Arc<Node>> = Vec::with_capacity(all.len());
        for node in all {
            let name = node.name_any();
            let observed_ready = ready_status(&node).to_string();
            let node = match self.try_update_health(client, settings, &node, leases, now).await {
                Some(updated) => Arc::new(updated),
                None => node,
            };
            if observed_ready == "True" && ready_status(&node) != "True" {
                tracing::info!(node = %name, "node is not ready");
                crate::events::normal(client, COMPONENT, node.as_ref(), "NodeNotReady", format!("Node {name} status is now: NodeNotReady")).await;
            }
            current.push(node);
        }

        // Pods on nodes that are not ready are not ready either.
        let down: HashSet<String> = current.iter().filter(|n| ready_status(n) != "True").map(|n| n.name_any()).collect();
        if !down.is_empty() {
            for pod in pods.state() {
                let on = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).unwrap_or("");
                if down.contains(on) {
                    mark_pod_not_ready(client, &pod).await;
                }
            }
        }

        self.handle_disruption(client, settings, &current, now).await;
        if !self.full_disruption {
            self.taint_pass(client, &current, now).await;
        }
    }

    /// Refreshes the node's probe time from its Lease and status; past the grace period, writes
    /// its conditions as Unknown. Returns the node as written, if it was.
    async fn try_update_health(&mut self, client: &Client, settings: &NodeSettings, node: &Node, leases: &Store<Lease>, now: Instant) -> Option<Node> {
        let name = node.name_any();
        let ready = condition(node, "Ready").map(|c| (c.status.clone(), c.last_heartbeat_time.clone(), c.last_transition_time.clone()));
        let lease = leases.get(&reflector::ObjectRef::new(&name).within(LEASE_NAMESPACE)).and_then(|l| l.spec.as_ref().and_then(|s| s.renew_time.clone()));
        if !self.health.contains_key(&name) {
            tracing::info!(node = %name, "node registered with the node controller");
            crate::events::normal(client, COMPONENT, node, "RegisteredNode", format!("Node {name} event: Registered Node {name} in Controller")).await;
            self.health.insert(name.clone(), Health { probe: now, ready_seen: ready.clone(), lease_renew: lease.clone() });
        }
        let h = self.health.get_mut(&name)?;
        if h.ready_seen != ready {
            h.ready_seen = ready.clone();
            h.probe = now;
        }
        if lease.as_ref().map(|l| l.0) > h.lease_renew.as_ref().map(|l| l.0) {
            h.lease_renew = lease;
            h.probe = now;
        }
        let grace = if ready.is_none() { settings.startup_grace_period } else { settings.grace_period };
        if now.saturating_duration_since(h.probe) <= grace {
            return None;
        }
        let status = unknown_status(node, &crate::util::now())?;
        let mut updated = node.clone();
        updated.status = Some(status);
        let api = Api::<Node>::all(client.clone());
        match api.replace_status(&name, &PostParams::default(), &updated).await {
            Ok(n) => {
                tracing::info!(node = %name, "node stopped posting status; conditions set to Unknown");
                // Our own write is not a sign of life.
                if let Some(h) = self.health.get_mut(&name) {
                    h.ready_seen = condition(&n, "Ready").map(|c| (c.status.clone(), c.last_heartbeat_time.clone(), c.last_transition_time.clone()));
                }
                Some(n)
            }
            Err(e) => {
                tracing::debug!(node = %name, error = %e, "marking node Unknown failed; retrying at the next pass");
                None
            }
        }
    }

    /// Zone states and the eviction rates that follow; all zones down stops NoExecute tainting
    /// and takes the NoExecute taints off again (upstream handleDisruption).
    async fn handle_disruption(&mut self, client: &Client, settings: &NodeSettings, nodes: &[Arc<Node>], now: Instant) {
        let mut counts: HashMap<String, (usize, usize)> = HashMap::new();
        for n in nodes {
            let e = counts.entry(zone_key(n)).or_default();
            if ready_status(n) == "True" {
                e.0 += 1;
            } else {
                e.1 += 1;
            }
        }
        let states: HashMap<String, ZoneState> = counts.iter().map(|(z, (r, nr))| (z.clone(), zone_state(*r, *nr, settings.unhealthy_zone_threshold))).collect();
        let all_down = !states.is_empty() && states.values().all(|s| *s == ZoneState::FullDisruption);
        if all_down && !self.full_disruption {
            tracing::warn!("every node is not ready: entering full disruption mode (no NoExecute taints)");
            self.full_disruption = true;
            self.queues.clear();
        } else if !all_down && self.full_disruption {
            tracing::info!("some nodes are ready again: leaving full disruption mode");
            self.full_disruption = false;
            // Give every node a fresh grace period, as upstream does.
            for h in self.health.values_mut() {
                h.probe = now;
            }
            self.buckets.clear();
            self.zone_states.clear();
        }
        if self.full_disruption {
            for n in nodes {
                if has_taint(n, TAINT_UNREACHABLE, NO_EXECUTE) || has_taint(n, TAINT_NOT_READY, NO_EXECUTE) {
                    update_taints(client, n, &[], &[(TAINT_UNREACHABLE, NO_EXECUTE), (TAINT_NOT_READY, NO_EXECUTE)]).await;
                }
            }
            return;
        }
        for (zone, state) in &states {
            if self.zone_states.get(zone) != Some(state) || !self.buckets.contains_key(zone) {
                let (r, nr) = counts[zone];
                let qps = zone_rate(settings, *state, r + nr);
                if self.zone_states.contains_key(zone) {
                    tracing::info!(zone = %zone.replace('\0', ""), ?state, qps, "zone state changed");
                }
                self.buckets.insert(zone.clone(), Bucket::new(qps, now));
            }
        }
        self.zone_states = states;
    }

    /// NoExecute taints (upstream doNoExecuteTaintingPass): removed at once from ready nodes,
    /// swapped at once between not-ready and unreachable, added at the zone's rate.
    async fn taint_pass(&mut self, client: &Client, nodes: &[Arc<Node>], now: Instant) {
        let by_name: HashMap<String, &Arc<Node>> = nodes.iter().map(|n| (n.name_any(), n)).collect();
        for n in nodes {
            let name = n.name_any();
            let zone = zone_key(n);
            let (want, other) = match ready_status(n) {
                "True" => {
                    if has_taint(n, TAINT_UNREACHABLE, NO_EXECUTE) || has_taint(n, TAINT_NOT_READY, NO_EXECUTE) {
                        tracing::info!(node = %name, "node is ready again: removing its NoExecute taints");
                        update_taints(client, n, &[], &[(TAINT_UNREACHABLE, NO_EXECUTE), (TAINT_NOT_READY, NO_EXECUTE)]).await;
                    }
                    if let Some(q) = self.queues.get_mut(&zone) {
                        q.retain(|x| x != &name);
                    }
                    continue;
                }
                "False" => (TAINT_NOT_READY, TAINT_UNREACHABLE),
                _ => (TAINT_UNREACHABLE, TAINT_NOT_READY),
            };
            if has_taint(n, want, NO_EXECUTE) {
                if has_taint(n, other, NO_EXECUTE) {
                    update_taints(client, n, &[], &[(other, NO_EXECUTE)]).await;
                }
                continue;
            }
            if has_taint(n, other, NO_EXECUTE) {
                // Already evicting: switch the reason without waiting for the rate limiter.
                update_taints(client, n, &[(want, NO_EXECUTE)], &[(other, NO_EXECUTE)]).await;
                continue;
            }
            let q = self.queues.entry(zone).or_default();
            if !q.contains(&name) {
                q.push_back(name);
            }
        }
        for (zone, q) in self.queues.iter_mut() {
            let Some(bucket) = self.buckets.get_mut(zone) else { continue };
            while let Some(name) = q.front().cloned() {
                let Some(n) = by_name.get(&name) else {
                    q.pop_front();
                    continue;
                };
                let want = match ready_status(n) {
                    "True" => {
                        q.pop_front();
                        continue;
                    }
                    "False" => TAINT_NOT_READY,
                    _ => TAINT_UNREACHABLE,
                };
                if !bucket.try_accept(now) {
                    break;
                }
                q.pop_front();
                tracing::info!(node = %name, taint = want, "tainting node NoExecute");
                if !update_taints(client, n, &[(want, NO_EXECUTE)], &[]).await {
                    // Try again at the next pass, first in line.
                    q.push_front(name);
                    break;
                }
            }
        }
        self.queues.retain(|_, q| !q.is_empty());
    }
}

/// The pod's Ready condition set False (upstream MarkPodsNotReady), guarded by its
/// resourceVersion; pods already not ready or finished are left alone.
pub fn pod_not_ready_status(pod: &Pod, now: &Time) -> Option<Vec<PodCondition>> {
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let mut conds = status.conditions.clone()?;
    let c = conds.iter_mut().find(|c| c.type_ == "Ready")?;
    if c.status == "False" {
        return None;
    }
    c.status = "False".into();
    c.last_transition_time = Some(now.clone());
    Some(conds)
}

async fn mark_pod_not_ready(client: &Client, pod: &Pod) {
    let Some(conds) = pod_not_ready_status(pod, &crate::util::now()) else { return };
    let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
    let mut updated = pod.clone();
    if let Some(s) = updated.status.as_mut() {
        s.conditions = Some(conds);
    }
    match Api::<Pod>::namespaced(client.clone(), &ns).replace_status(&name, &PostParams::default(), &updated).await {
        Ok(_) => {
            tracing::info!(pod = %format!("{ns}/{name}"), "pod marked not ready: its node is not ready");
            crate::events::record(client, COMPONENT, pod, "Warning", "NodeNotReady", "Node is not ready".into()).await;
        }
        Err(e) => tracing::debug!(pod = %format!("{ns}/{name}"), error = %e, "marking pod not ready failed; retrying at the next pass"),
    }
}

/// The NoSchedule taints a node's conditions and spec.unschedulable call for.
pub fn condition_taint_keys(node: &Node) -> Vec<&'static str> {
    let mut keys: Vec<&'static str> = CONDITION_TAINTS.iter().filter(|(t, s, _)| condition(node, t).map(|c| c.status.as_str()) == Some(*s)).map(|(_, _, k)| *k).collect();
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        keys.push(TAINT_UNSCHEDULABLE);
    }
    keys
}

/// TaintNodesByCondition (upstream doNoScheduleTaintingPass) and the unschedulable taint.
async fn reconcile_noschedule(node: Arc<Node>, client: Arc<Client>) -> Result<Action, crate::Error> {
    if node.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let want = condition_taint_keys(&node);
    // A node that has not reported its conditions yet keeps what it has.
    if node.status.as_ref().and_then(|s| s.conditions.as_ref()).is_none_or(|c| c.is_empty()) && node.spec.as_ref().and_then(|s| s.unschedulable).is_none() {
        return Ok(Action::await_change());
    }
    let managed: Vec<&str> = CONDITION_TAINTS.iter().map(|(_, _, k)| *k).chain([TAINT_UNSCHEDULABLE]).collect();
    let remove: Vec<(&str, &str)> = managed.iter().filter(|k| !want.contains(k)).map(|k| (*k, NO_SCHEDULE)).collect();
    let add: Vec<(&str, &str)> = want.iter().map(|k| (*k, NO_SCHEDULE)).collect();
    if let Some(new) = swap_taints(taints(&node), &add, &remove, &crate::util::now()) {
        write_taints(&client, &node, new).await?;
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;

    fn t(s: i64) -> Time {
        Time(jiff::Timestamp::from_second(s).unwrap())
    }

    fn node(ready: Option<&str>, taints: &[(&str, &str)]) -> Node {
        Node {
            metadata: kube::api::ObjectMeta { name: Some("n".into()), creation_timestamp: Some(t(1)), ..Default::default() },
            spec: Some(NodeSpec { taints: Some(taints.iter().map(|(k, e)| Taint { key: k.to_string(), effect: e.to_string(), ..Default::default() }).collect()), ..Default::default() }),
            status: Some(NodeStatus {
                conditions: ready.map(|s| vec![NodeCondition { type_: "Ready".into(), status: s.into(), reason: Some("KubeletReady".into()), last_heartbeat_time: Some(t(5)), last_transition_time: Some(t(5)), ..Default::default() }]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn conditions_go_unknown_once() {
        let n = node(Some("True"), &[]);
        let s = unknown_status(&n, &t(100)).expect("changes");
        let conds = s.conditions.unwrap();
        let ready = conds.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_deref(), ready.message.as_deref()), ("Unknown", Some("NodeStatusUnknown"), Some("Kubelet stopped posting node status.")));
        assert_eq!(ready.last_heartbeat_time, Some(t(5)), "heartbeat kept");
        assert_eq!(ready.last_transition_time, Some(t(100)));
        let mem = conds.iter().find(|c| c.type_ == "MemoryPressure").unwrap();
        assert_eq!((mem.status.as_str(), mem.reason.as_deref()), ("Unknown", Some("NodeStatusNeverUpdated")));
        assert_eq!(conds.len(), 4);
        let mut again = n.clone();
        again.status = Some(NodeStatus { conditions: Some(conds), ..Default::default() });
        assert!(unknown_status(&again, &t(200)).is_none(), "already Unknown: nothing to write");
        // Never reported: Unknown with the never-updated reason.
        let fresh = unknown_status(&node(None, &[]), &t(9)).unwrap();
        assert!(fresh.conditions.unwrap().iter().all(|c| c.status == "Unknown" && c.message.as_deref() == Some("Kubelet never posted node status.")));
    }

    #[test]
    fn zone_states_and_rates() {
        assert_eq!(zone_state(0, 1, 0.55), ZoneState::FullDisruption);
        assert_eq!(zone_state(0, 0, 0.55), ZoneState::Normal);
        assert_eq!(zone_state(1, 2, 0.55), ZoneState::Normal, "two not ready never make a partial disruption");
        assert_eq!(zone_state(2, 3, 0.55), ZoneState::PartialDisruption);
        assert_eq!(zone_state(3, 3, 0.55), ZoneState::Normal);
        let s = NodeSettings::default();
        assert_eq!(zone_rate(&s, ZoneState::Normal, 10), 0.1);
        assert_eq!(zone_rate(&s, ZoneState::FullDisruption, 10), 0.1);
        assert_eq!(zone_rate(&s, ZoneState::PartialDisruption, 10), 0.0, "small unhealthy zone: no evictions");
        assert_eq!(zone_rate(&s, ZoneState::PartialDisruption, 51), 0.01);
    }

    #[test]
    fn bucket_allows_one_then_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(0.5, t0);
        assert!(b.try_accept(t0));
        assert!(!b.try_accept(t0 + Duration::from_secs(1)));
        assert!(b.try_accept(t0 + Duration::from_millis(2100)));
        assert!(!b.try_accept(t0 + Duration::from_millis(2200)));
        let mut z = Bucket::new(0.0, t0);
        assert!(!z.try_accept(t0 + Duration::from_secs(100)));
    }

    #[test]
    fn taints_swap_without_duplicates() {
        let cur = vec![Taint { key: "a".into(), effect: "NoSchedule".into(), value: Some("x".into()), time_added: None }, Taint { key: TAINT_NOT_READY.into(), effect: NO_EXECUTE.into(), value: None, time_added: Some(t(1)) }];
        let out = swap_taints(&cur, &[(TAINT_UNREACHABLE, NO_EXECUTE)], &[(TAINT_NOT_READY, NO_EXECUTE)], &t(7)).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].key, "a", "others' taints kept");
        assert_eq!((out[1].key.as_str(), out[1].time_added.clone()), (TAINT_UNREACHABLE, Some(t(7))));
        assert!(swap_taints(&out, &[(TAINT_UNREACHABLE, NO_EXECUTE)], &[], &t(9)).is_none(), "present already: no write");
    }

    #[test]
    fn noschedule_taints_follow_conditions_and_cordon() {
        assert_eq!(condition_taint_keys(&node(Some("Unknown"), &[])), vec![TAINT_UNREACHABLE]);
        assert_eq!(condition_taint_keys(&node(Some("False"), &[])), vec![TAINT_NOT_READY]);
        assert!(condition_taint_keys(&node(Some("True"), &[])).is_empty());
        let mut cordoned = node(Some("True"), &[]);
        cordoned.spec.as_mut().unwrap().unschedulable = Some(true);
        assert_eq!(condition_taint_keys(&cordoned), vec![TAINT_UNSCHEDULABLE]);
    }

    #[test]
    fn zone_keys() {
        let mut n = node(None, &[]);
        assert_eq!(zone_key(&n), "");
        n.metadata.labels = Some([("topology.kubernetes.io/zone".to_string(), "z1".to_string())].into());
        assert_eq!(zone_key(&n), ":\0:z1");
    }

    #[test]
    fn pods_marked_not_ready_once() {
        use k8s_openapi::api::core::v1::PodStatus;
        let pod = |phase: &str, ready: &str| Pod { status: Some(PodStatus { phase: Some(phase.into()), conditions: Some(vec![PodCondition { type_: "Ready".into(), status: ready.into(), ..Default::default() }]), ..Default::default() }), ..Default::default() };
        let c = pod_not_ready_status(&pod("Running", "True"), &t(3)).unwrap();
        assert_eq!((c[0].status.as_str(), c[0].last_transition_time.clone()), ("False", Some(t(3))));
        assert!(pod_not_ready_status(&pod("Running", "False"), &t(3)).is_none());
        assert!(pod_not_ready_status(&pod("Succeeded", "True"), &t(3)).is_none());
    }
}
