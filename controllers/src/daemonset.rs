//! DaemonSet controller: one pod per eligible node. A node is eligible when the template's
//! nodeSelector and required node affinity match it and the pod (with the DaemonSet default
//! tolerations) tolerates its NoSchedule and NoExecute taints; a pod may stay where only
//! NoSchedule taints are untolerated. Pods are created with a required node affinity
//! `matchFields metadata.name In [node]` and bound by the scheduler, as upstream since 1.12.
//! Updates roll node by node (RollingUpdate with maxUnavailable/maxSurge) or wait for the user
//! to delete pods (OnDelete); every template is a ControllerRevision (history.rs).
//!
//! Pods and nodes are listed live from the API on each sync, as the ReplicaSet controller does.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::future::join_all;
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodTemplateSpec, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::deployment::resolve_int_or_percent;
use crate::history::{self, HASH_LABEL};
use crate::util::{controller_ref, owner_ref, pod_available, pod_ready, selector_matches};

const COMPONENT: &str = "daemonset-controller";
/// The template generation label upstream also accepts as "updated" (with the annotation the
/// API server keeps on the DaemonSet, when present).
const TEMPLATE_GENERATION_LABEL: &str = "pod-template-generation";
const TEMPLATE_GENERATION_ANNOTATION: &str = "deprecated.daemonset.template.generation";
/// Failed pods are replaced after a backoff that doubles up to this (upstream's 15 minutes).
const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);

struct Ctx {
    client: Client,
    /// (DaemonSet uid, node) -> (last failed-pod deletion, current backoff).
    backoff: Mutex<HashMap<(String, String), (Instant, Duration)>>,
}

pub async fn run(client: Client, inf: Arc<crate::informer::Informers>) -> anyhow::Result<()> {
    let ctl = Controller::new(Api::<DaemonSet>::all(client.clone()), watcher::Config::default());
    let store = ctl.store();
    // Any node change (added, removed, labels, taints) may change where every DaemonSet runs.
    let pods_store = store.clone();
    let ctl = ctl
        .watches_shared_stream(inf.pods.subscribe(), move |pod: Arc<Pod>| pod_owners::<DaemonSet>(&pods_store.state(), &pod, |ds| ds.spec.as_ref().map(|s| &s.selector)))
        .watches_shared_stream(inf.nodes.subscribe(), move |_node: Arc<Node>| store.state().iter().map(|ds| ObjectRef::from_obj(ds.as_ref())).collect::<Vec<_>>());
    let ctx = Arc::new(Ctx { client, backoff: Mutex::new(HashMap::new()) });
    crate::util::drain("daemonset", ctl.run(reconcile, crate::util::error_policy, ctx)).await;
    Ok(())
}

impl Ctx {
    /// How long failed pods on this node must still wait; None (and the next, doubled, delay
    /// starts) when one may be replaced now.
    fn backoff_left(&self, key: (String, String)) -> Option<Duration> {
        let mut backoff = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        let entry = backoff.get(&key).copied();
        if let Some((since, delay)) = entry {
            let left = delay.saturating_sub(since.elapsed());
            if !left.is_zero() {
                return Some(left);
            }
        }
        let delay = entry.map_or(Duration::from_secs(1), |(_, d)| (d * 2).min(MAX_BACKOFF));
        backoff.insert(key, (Instant::now(), delay));
        None
    }
}

async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Ctx>) -> Result<Action, crate::Error> {
    Ok(sync(&ds, &ctx).await?)
}

/// The workloads of kind `K` a pod event concerns: its controller when that is a `K`, else
/// (an orphan) those in its namespace whose selector matches it, which may adopt it.
pub fn pod_owners<K>(workloads: &[std::sync::Arc<K>], pod: &Pod, selector: impl Fn(&K) -> Option<&LabelSelector>) -> Vec<kube::runtime::reflector::ObjectRef<K>>
where
    K: kube::Resource<DynamicType = ()>,
{
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    if let Some(c) = controller_ref(&pod.metadata) {
        let ours = c.kind == K::kind(&()) && c.api_version == K::api_version(&());
        return if ours { vec![kube::runtime::reflector::ObjectRef::new(&c.name).within(&ns)] } else { vec![] };
    }
    workloads
        .iter()
        .filter(|w| w.namespace().as_deref() == Some(ns.as_str()) && selector(w).is_some_and(|s| selector_matches(s, pod.metadata.labels.as_ref())))
        .map(|w| kube::runtime::reflector::ObjectRef::from_obj(w.as_ref()))
        .collect()
}

// ---------------------------------------------------------------- placement (pure)

/// The tolerations every daemon pod gets (upstream AddOrUpdateDaemonPodTolerations).
pub fn add_default_tolerations(spec: &mut k8s_openapi::api::core::v1::PodSpec) {
    let mut wanted = vec![
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if spec.host_network == Some(true) {
        wanted.push(("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    let tols = spec.tolerations.get_or_insert_with(Vec::new);
    for (key, effect) in wanted {
        let t = Toleration { key: Some(key.into()), operator: Some("Exists".into()), effect: Some(effect.into()), ..Default::default() };
        // Same key, operator, value and effect: replaced (it may carry tolerationSeconds).
        let same = |x: &Toleration| x.key == t.key && x.operator.as_deref().unwrap_or("Equal") == "Exists" && x.effect == t.effect && x.value.as_deref().unwrap_or("").is_empty();
        match tols.iter().position(same) {
            Some(i) => tols[i] = t,
            None => tols.push(t),
        }
    }
}

/// Requires the node by name, dropping the template's other required terms (the controller has
/// already checked them), as upstream ReplaceDaemonSetPodNodeNameNodeAffinity.
pub fn pin_to_node(spec: &mut k8s_openapi::api::core::v1::PodSpec, node: &str) {
    let selector = NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_fields: Some(vec![NodeSelectorRequirement { key: "metadata.name".into(), operator: "In".into(), values: Some(vec![node.into()]) }]),
            match_expressions: None,
        }],
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let na = affinity.node_affinity.get_or_insert_with(NodeAffinity::default);
    na.required_during_scheduling_ignored_during_execution = Some(selector);
}

/// The node a daemon pod is for: its nodeName, else its `matchFields metadata.name In [n]`.
pub fn target_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(n.clone());
    }
    let terms = &spec.affinity.as_ref()?.node_affinity.as_ref()?.required_during_scheduling_ignored_during_execution.as_ref()?.node_selector_terms;
    terms.iter().flat_map(|t| t.match_fields.iter().flatten()).find(|r| r.key == "metadata.name" && r.operator == "In").and_then(|r| r.values.as_ref().filter(|v| v.len() == 1)).map(|v| v[0].clone())
}

/// (should run, may keep running) for a daemon pod `probe` (template plus default tolerations)
/// on `node` (upstream NodeShouldRunDaemonPod).
pub fn should_run(probe: &Pod, node: &Node) -> (bool, bool) {
    if let Some(n) = probe.spec.as_ref().and_then(|s| s.node_name.as_deref()).filter(|n| !n.is_empty()) {
        if node.metadata.name.as_deref() != Some(n) {
            return (false, false);
        }
    }
    if !sched::filter::matches_node_selector(probe, node) {
        return (false, false);
    }
    if sched::filter::untolerated_taint(probe, node).is_some() {
        let tols = probe.spec.as_ref().and_then(|s| s.tolerations.as_deref()).unwrap_or(&[]);
        let taints = node.spec.as_ref().and_then(|s| s.taints.as_deref()).unwrap_or(&[]);
        let evicted = taints.iter().filter(|t| t.effect == "NoExecute").any(|taint| !tols.iter().any(|t| sched::filter::tolerates(t, taint)));
        return (false, !evicted);
    }
    (true, true)
}

/// A daemon pod as the rolling update sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Slot {
    pub name: String,
    pub updated: bool,
    pub available: bool,
}

/// The node's new and old pod, or None when it has more than one of either (the manage step
/// cleans that up first).
fn new_and_old(pods: &[Slot]) -> Option<(Option<&Slot>, Option<&Slot>)> {
    let (mut new, mut old) = (None, None);
    for p in pods {
        let slot = if p.updated { &mut new } else { &mut old };
        if slot.is_some() {
            return None;
        }
        *slot = Some(p);
    }
    Some((new, old))
}

/// Without surge: old pods to delete now, keeping at most `max_unavailable` nodes without an
/// available pod; unavailable old pods are replaced regardless (upstream rollingUpdate).
pub fn roll_without_surge(nodes: &BTreeMap<String, Vec<Slot>>, max_unavailable: i32) -> Vec<String> {
    let mut unavailable = 0;
    let mut replace = Vec::new();
    let mut candidates = Vec::new();
    for pods in nodes.values() {
        let Some((new, old)) = new_and_old(pods) else {
            unavailable += 1;
            continue;
        };
        match (new, old) {
            (None, None) | (Some(_), Some(_)) => unavailable += 1,
            (Some(n), None) => {
                if !n.available {
                    unavailable += 1;
                }
            }
            (None, Some(o)) => {
                if !o.available {
                    replace.push(o.name.clone());
                } else if unavailable < max_unavailable {
                    candidates.push(o.name.clone());
                }
            }
        }
    }
    let room = (max_unavailable - unavailable).clamp(0, candidates.len() as i32) as usize;
    replace.extend(candidates.into_iter().take(room));
    replace
}

/// With surge: (old pods to delete, nodes to create a new pod on). A new pod goes next to an
/// old one (at most `max_surge` at a time, at once where the old one is unavailable); the old
/// one goes when the new one is available. Old pods on nodes that should no longer run one go
/// only while enough pods are available elsewhere.
pub fn roll_with_surge(nodes: &BTreeMap<String, Vec<Slot>>, should_run: impl Fn(&str) -> bool, max_surge: i32, desired: i32) -> (Vec<String>, Vec<String>) {
    let mut delete = Vec::new();
    let mut sunset = Vec::new();
    let mut candidates = Vec::new();
    let mut allowed = Vec::new();
    let (mut surge, mut available) = (0, 0);
    for (node, pods) in nodes {
        let Some((new, old)) = new_and_old(pods) else {
            surge += 1;
            continue;
        };
        if let Some(p) = old.or(new) {
            if p.available {
                available += 1;
            }
        }
        match (new, old) {
            (_, None) => {}
            (None, Some(o)) if !o.available => {
                if should_run(node) {
                    allowed.push(node.clone());
                } else {
                    delete.push(o.name.clone());
                }
            }
            (None, Some(o)) => {
                if !should_run(node) {
                    sunset.push(o.name.clone());
                } else if surge < max_surge {
                    candidates.push(node.clone());
                }
            }
            (Some(n), Some(o)) => {
                if n.available {
                    delete.push(o.name.clone());
                } else {
                    surge += 1;
                }
            }
        }
    }
    let deletable = (available - desired).clamp(0, sunset.len() as i32) as usize;
    delete.extend(sunset.into_iter().take(deletable));
    let room = (max_surge - surge).clamp(0, candidates.len() as i32) as usize;
    allowed.extend(candidates.into_iter().take(room));
    (delete, allowed)
}

// ---------------------------------------------------------------- sync

fn pod_failed(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
}

fn pod_succeeded(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded")
}

fn created(p: &Pod) -> Option<jiff::Timestamp> {
    p.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

fn is_updated(p: &Pod, hash: &str, generation: Option<&str>) -> bool {
    let labels = p.labels();
    labels.get(HASH_LABEL).map(String::as_str) == Some(hash) || generation.is_some_and(|g| labels.get(TEMPLATE_GENERATION_LABEL).map(String::as_str) == Some(g))
}

/// The pod the template describes (without placement), with the default tolerations.
fn probe_pod(ds: &DaemonSet, template: &PodTemplateSpec) -> Pod {
    let tm = template.metadata.clone().unwrap_or_default();
    let mut spec = template.spec.clone().unwrap_or_default();
    add_default_tolerations(&mut spec);
    Pod {
        metadata: ObjectMeta { generate_name: Some(format!("{}-", ds.name_any())), namespace: ds.namespace(), labels: tm.labels, annotations: tm.annotations, finalizers: tm.finalizers, ..Default::default() },
        spec: Some(spec),
        status: None,
    }
}

async fn sync(ds: &DaemonSet, ctx: &Ctx) -> anyhow::Result<Action> {
    let client = &ctx.client;
    let name = ds.name_any();
    let ns = ds.namespace().context("DaemonSet without namespace")?;
    let uid = ds.metadata.uid.clone().context("DaemonSet without uid")?;
    let spec = ds.spec.as_ref().context("DaemonSet without spec")?;
    if ds.metadata.deletion_timestamp.is_some() {
        // The garbage collector removes the pods and revisions.
        return Ok(Action::await_change());
    }
    let ds_api = Api::<DaemonSet>::namespaced(client.clone(), &ns);
    let pods_api = Api::<Pod>::namespaced(client.clone(), &ns);
    let nodes = Api::<Node>::all(client.clone()).list(&ListParams::default()).await.context("list nodes")?.items;
    let all = pods_api.list(&ListParams::default()).await.with_context(|| format!("list pods in {ns}"))?;
    let mut mine: Vec<Pod> = Vec::new();
    for pod in all.items {
        let matches = selector_matches(&spec.selector, pod.metadata.labels.as_ref());
        match controller_ref(&pod.metadata) {
            Some(c) if c.uid == uid => {
                if matches {
                    mine.push(pod);
                } else {
                    crate::util::release_pod(&pods_api, &pod, &uid).await;
                }
            }
            None if matches && pod.metadata.deletion_timestamp.is_none() => {
                if let Some(p) = crate::util::adopt_pod(&pods_api, &pod, ds).await {
                    mine.push(p);
                }
            }
            _ => {}
        }
    }

    let collisions = ds.status.as_ref().and_then(|s| s.collision_count);
    let revs = history::sync(client, history::Parent { obj: ds, selector: &spec.selector, template: &spec.template, collision_count: collisions }, |n| {
        let ds_api = ds_api.clone();
        let name = name.clone();
        async move {
            ds_api.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({"status": {"collisionCount": n}}))).await.context("bump collisionCount")?;
            Ok(())
        }
    })
    .await?;
    let hash = revs.current.labels().get(HASH_LABEL).cloned().unwrap_or_else(|| revs.current.name_any());
    let generation = ds.annotations().get(TEMPLATE_GENERATION_ANNOTATION).cloned();
    let probe = probe_pod(ds, &spec.template);
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let now = jiff::Timestamp::now();

    // Live pods by target node, oldest first.
    let mut by_node: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    for p in mine.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
        if let Some(n) = target_node(p) {
            by_node.entry(n).or_default().push(p);
        }
    }
    for v in by_node.values_mut() {
        v.sort_by_key(|p| created(p));
    }
    let placement: HashMap<String, (bool, bool)> = nodes.iter().map(|n| (n.name_any(), should_run(&probe, n))).collect();

    let rolling = spec.update_strategy.as_ref().and_then(|s| s.type_.as_deref()).unwrap_or("RollingUpdate") == "RollingUpdate";
    let ru = spec.update_strategy.as_ref().and_then(|s| s.rolling_update.as_ref());
    let desired = placement.values().filter(|(run, _)| *run).count() as i32;
    let max_surge = if rolling { ru.and_then(|r| r.max_surge.as_ref()).map(|v| resolve_int_or_percent(v, desired, true)).transpose()?.unwrap_or(0) } else { 0 };
    let mut max_unavailable = ru.and_then(|r| r.max_unavailable.as_ref()).map(|v| resolve_int_or_percent(v, desired, true)).transpose()?.unwrap_or(1);
    if desired > 0 && max_unavailable == 0 && max_surge == 0 {
        max_unavailable = 1;
    }

    // Manage: a pod on every node that should run one, none elsewhere.
    let mut create: Vec<String> = Vec::new();
    let mut delete: Vec<&Pod> = Vec::new();
    let mut requeue: Option<Duration> = None;
    for node in &nodes {
        let node_name = node.name_any();
        let (run, keep) = placement[&node_name];
        let pods = by_node.get(&node_name).map(Vec::as_slice).unwrap_or(&[]);
        if pods.is_empty() {
            if run {
                create.push(node_name);
            }
            continue;
        }
        if !keep {
            delete.extend(pods.iter().copied());
            continue;
        }
        let mut running: Vec<&Pod> = Vec::new();
        for &p in pods {
            if pod_failed(p) {
                if let Some(left) = ctx.backoff_left((uid.clone(), node_name.clone())) {
                    requeue = Some(requeue.map_or(left, |r| r.min(left)));
                    continue;
                }
                crate::events::record(client, COMPONENT, ds, "Warning", "FailedDaemonPod", format!("Found failed daemon pod {ns}/{} on node {node_name}, will try to kill it", p.name_any())).await;
                delete.push(p);
            } else if pod_succeeded(p) {
                delete.push(p);
            } else {
                running.push(p);
            }
        }
        if running.len() > 1 {
            if max_surge == 0 {
                delete.extend(running[1..].iter().copied());
            } else {
                // Surging: keep the oldest new pod, and the oldest old one only while it is
                // ready and the new one is not.
                let new = running.iter().position(|p| is_updated(p, &hash, generation.as_deref()));
                let old = running.iter().position(|p| !is_updated(p, &hash, generation.as_deref()));
                let keep_old = matches!((new, old), (Some(n), Some(o)) if pod_ready(running[o]) && !pod_ready(running[n]));
                for (i, p) in running.iter().enumerate() {
                    let kept = match new {
                        Some(n) => i == n || (keep_old && Some(i) == old),
                        None => Some(i) == old,
                    };
                    if !kept {
                        delete.push(p);
                    }
                }
            }
        }
    }
    // Pods for nodes that no longer exist: no kubelet will confirm their graceful deletion, so
    // they go at once (upstream's pod garbage collector force-deletes them likewise). Pods
    // without any target node are left alone, as upstream does.
    let mut orphaned: Vec<&Pod> = Vec::new();
    for (n, pods) in &by_node {
        if !placement.contains_key(n) {
            orphaned.extend(pods.iter().copied());
        }
    }

    // Roll only when placement is settled (upstream waits for its expectations likewise).
    if create.is_empty() && delete.is_empty() && orphaned.is_empty() && rolling {
        let mut slots: BTreeMap<String, Vec<Slot>> = BTreeMap::new();
        for (n, (run, _)) in &placement {
            if *run {
                slots.entry(n.clone()).or_default();
            }
        }
        for (n, pods) in &by_node {
            for p in pods {
                slots.entry(n.clone()).or_default().push(Slot { name: p.name_any(), updated: is_updated(p, &hash, generation.as_deref()), available: pod_available(p, min_ready, now) });
            }
        }
        let (names, nodes_to_create) = if max_surge == 0 { (roll_without_surge(&slots, max_unavailable), Vec::new()) } else { roll_with_surge(&slots, |n| placement.get(n).is_some_and(|(run, _)| *run), max_surge, desired) };
        let names: HashSet<String> = names.into_iter().collect();
        delete.extend(mine.iter().filter(|p| names.contains(&p.name_any())));
        create.extend(nodes_to_create);
    }

    // Act.
    let mut template = spec.template.clone();
    let labels = template.metadata.get_or_insert_with(Default::default).labels.get_or_insert_with(Default::default);
    labels.insert(HASH_LABEL.into(), hash.clone());
    if let Some(g) = &generation {
        labels.insert(TEMPLATE_GENERATION_LABEL.into(), g.clone());
    }
    let mut base = probe_pod(ds, &template);
    base.metadata.owner_references = Some(vec![owner_ref(ds).context("DaemonSet without name or uid")?]);
    let pp = PostParams::default();
    let creations = create.iter().map(|node| {
        let mut pod = base.clone();
        if let Some(s) = pod.spec.as_mut() {
            pin_to_node(s, node);
        }
        let pods_api = &pods_api;
        let pp = &pp;
        async move { (node, pods_api.create(pp, &pod).await) }
    });
    for (node, r) in join_all(creations).await {
        match r {
            Ok(p) => crate::events::normal(client, COMPONENT, ds, "SuccessfulCreate", format!("Created pod: {}", p.name_any())).await,
            Err(e) => {
                crate::events::record(client, COMPONENT, ds, "Warning", "FailedCreate", format!("Error creating: {e}")).await;
                tracing::warn!(ds = %name, namespace = %ns, node = %node, error = %e, "creating daemon pod failed");
            }
        }
    }
    let mut seen = HashSet::new();
    let now_params = DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
    for (p, params) in delete.into_iter().map(|p| (p, DeleteParams::default())).chain(orphaned.into_iter().map(|p| (p, now_params.clone()))) {
        let pname = p.name_any();
        if !seen.insert(pname.clone()) {
            continue;
        }
        match pods_api.delete(&pname, &params).await {
            Ok(_) => crate::events::normal(client, COMPONENT, ds, "SuccessfulDelete", format!("Deleted pod: {pname}")).await,
            Err(e) if crate::util::is_not_found(&e) => {}
            Err(e) => tracing::warn!(pod = %pname, namespace = %ns, error = %e, "deleting daemon pod failed"),
        }
    }

    // History beyond revisionHistoryLimit, except what live pods still run.
    let live: HashSet<&str> = mine.iter().filter_map(|p| p.labels().get(HASH_LABEL).map(String::as_str)).collect();
    let limit = spec.revision_history_limit.unwrap_or(10);
    let victims = history::to_prune(&revs.others, limit, |cr| cr.labels().get(HASH_LABEL).is_some_and(|h| live.contains(h.as_str())));
    history::prune(client, &ns, &victims).await;

    // Status from the pods as listed; their events bring us back as they change.
    let (mut current, mut ready, mut available, mut updated, mut misscheduled) = (0, 0, 0, 0, 0);
    for node in &nodes {
        let (run, _) = placement[&node.name_any()];
        let Some(pods) = by_node.get(&node.name_any()).filter(|v| !v.is_empty()) else { continue };
        if !run {
            misscheduled += 1;
            continue;
        }
        current += 1;
        let mut sorted = pods.clone();
        // Oldest first, running before not (upstream podByCreationTimestampAndPhase).
        sorted.sort_by_key(|p| (p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Running"), created(p)));
        let p = sorted[0];
        if pod_ready(p) {
            ready += 1;
            if pod_available(p, min_ready, now) {
                available += 1;
            }
        }
        if is_updated(p, &hash, generation.as_deref()) {
            updated += 1;
        }
    }
    let old = ds.status.clone().unwrap_or_default();
    let status = DaemonSetStatus {
        collision_count: old.collision_count,
        conditions: old.conditions.clone(),
        current_number_scheduled: current,
        desired_number_scheduled: desired,
        number_available: Some(available),
        number_misscheduled: misscheduled,
        number_ready: ready,
        number_unavailable: Some(desired - available),
        observed_generation: ds.metadata.generation,
        updated_number_scheduled: Some(updated),
    };
    if status != old {
        ds_api.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({"status": status}))).await.with_context(|| format!("update status of daemonset {ns}/{name}"))?;
    }
    if min_ready > 0 && ready > available {
        let r = Duration::from_secs(min_ready as u64 + 1);
        requeue = Some(requeue.map_or(r, |x| x.min(r)));
    }
    Ok(requeue.map(Action::requeue).unwrap_or_else(Action::await_change))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;

    fn node(v: serde_json::Value) -> Node {
        serde_json::from_value(v).unwrap()
    }

    fn probe(spec: serde_json::Value) -> Pod {
        let mut s: PodSpec = serde_json::from_value(spec).unwrap();
        add_default_tolerations(&mut s);
        Pod { spec: Some(s), ..Default::default() }
    }

    #[test]
    fn default_tolerations_are_added_once_and_replace_equivalent_ones() {
        let mut s: PodSpec = serde_json::from_value(json!({"containers": [], "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}, {"key": "x", "operator": "Exists"}]})).unwrap();
        add_default_tolerations(&mut s);
        add_default_tolerations(&mut s);
        let t = s.tolerations.unwrap();
        assert_eq!(t.len(), 7, "{t:?}");
        let nr = t.iter().find(|t| t.key.as_deref() == Some("node.kubernetes.io/not-ready")).unwrap();
        assert_eq!(nr.toleration_seconds, None);
        assert!(!t.iter().any(|t| t.key.as_deref() == Some("node.kubernetes.io/network-unavailable")));
        let mut h: PodSpec = serde_json::from_value(json!({"containers": [], "hostNetwork": true})).unwrap();
        add_default_tolerations(&mut h);
        assert!(h.tolerations.unwrap().iter().any(|t| t.key.as_deref() == Some("node.kubernetes.io/network-unavailable") && t.effect.as_deref() == Some("NoSchedule")));
    }

    #[test]
    fn placement_follows_selectors_and_taints() {
        let plain = probe(json!({"containers": []}));
        let n = node(json!({"metadata": {"name": "a", "labels": {"zone": "z1"}}}));
        assert_eq!(should_run(&plain, &n), (true, true));
        // Unschedulable nodes are fine: the default tolerations cover them.
        let cordoned = node(json!({"metadata": {"name": "a"}, "spec": {"unschedulable": true, "taints": [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]}}));
        assert_eq!(should_run(&plain, &cordoned), (true, true));
        let no_schedule = node(json!({"metadata": {"name": "a"}, "spec": {"taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]}}));
        assert_eq!(should_run(&plain, &no_schedule), (false, true));
        let no_execute = node(json!({"metadata": {"name": "a"}, "spec": {"taints": [{"key": "k", "value": "v", "effect": "NoExecute"}]}}));
        assert_eq!(should_run(&plain, &no_execute), (false, false));
        let tolerant = probe(json!({"containers": [], "tolerations": [{"key": "k", "operator": "Equal", "value": "v"}]}));
        assert_eq!(should_run(&tolerant, &no_execute), (true, true));
        let selective = probe(json!({"containers": [], "nodeSelector": {"zone": "z2"}}));
        assert_eq!(should_run(&selective, &n), (false, false));
        let affine = probe(json!({"containers": [], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z1"]}]}]}}}}));
        assert_eq!(should_run(&affine, &n), (true, true));
        // Preferred-only taints do not matter.
        let soft = node(json!({"metadata": {"name": "a"}, "spec": {"taints": [{"key": "k", "effect": "PreferNoSchedule"}]}}));
        assert_eq!(should_run(&plain, &soft), (true, true));
    }

    #[test]
    fn pods_are_pinned_by_match_fields_replacing_required_terms() {
        let mut s: PodSpec = serde_json::from_value(json!({"containers": [], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z1"]}]}, {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["old"]}]}]}}}})).unwrap();
        pin_to_node(&mut s, "n1");
        let pod = Pod { spec: Some(s), ..Default::default() };
        let terms = &pod.spec.as_ref().unwrap().affinity.as_ref().unwrap().node_affinity.as_ref().unwrap().required_during_scheduling_ignored_during_execution.as_ref().unwrap().node_selector_terms;
        assert_eq!(terms.len(), 1);
        assert_eq!(target_node(&pod).as_deref(), Some("n1"));
        let bound = Pod { spec: Some(PodSpec { node_name: Some("n2".into()), ..pod.spec.clone().unwrap() }), ..Default::default() };
        assert_eq!(target_node(&bound).as_deref(), Some("n2"));
        assert_eq!(target_node(&Pod::default()), None);
    }

    /// (node, [(pod, updated, available)]).
    type Layout<'a> = [(&'a str, &'a [(&'a str, bool, bool)])];

    #[test]
    fn pod_events_go_to_the_controller_or_to_matching_adopters() {
        let ds = |name: &str, ns: &str, app: &str| -> Arc<DaemonSet> { Arc::new(serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns}, "spec": {"selector": {"matchLabels": {"app": app}}, "template": {}}})).unwrap()) };
        let all = vec![ds("a", "default", "x"), ds("b", "default", "y"), ds("c", "other", "x")];
        fn sel(d: &DaemonSet) -> Option<&LabelSelector> {
            d.spec.as_ref().map(|s| &s.selector)
        }
        let names = |v: Vec<ObjectRef<DaemonSet>>| v.into_iter().map(|r| r.name).collect::<Vec<_>>();
        let orphan: Pod = serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "default", "labels": {"app": "x"}}})).unwrap();
        assert_eq!(names(pod_owners(&all, &orphan, sel)), ["a"]);
        let owned: Pod = serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "default", "labels": {"app": "x"}, "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "b", "uid": "u", "controller": true}]}})).unwrap();
        assert_eq!(names(pod_owners(&all, &owned, sel)), ["b"]);
        let foreign: Pod = serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "default", "labels": {"app": "x"}, "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "r", "uid": "u", "controller": true}]}})).unwrap();
        assert!(pod_owners(&all, &foreign, sel).is_empty());
    }

    fn slots(v: &Layout) -> BTreeMap<String, Vec<Slot>> {
        v.iter().map(|(n, pods)| (n.to_string(), pods.iter().map(|(name, updated, available)| Slot { name: name.to_string(), updated: *updated, available: *available }).collect())).collect()
    }

    #[test]
    fn rolling_without_surge_respects_max_unavailable() {
        let s = slots(&[("a", &[("pa", false, true)]), ("b", &[("pb", false, true)]), ("c", &[("pc", false, true)])]);
        assert_eq!(roll_without_surge(&s, 1), ["pa"]);
        assert_eq!(roll_without_surge(&s, 2), ["pa", "pb"]);
        // A node with an unavailable new pod uses up the budget.
        let s = slots(&[("a", &[("pa", true, false)]), ("b", &[("pb", false, true)]), ("c", &[("pc", false, true)])]);
        assert!(roll_without_surge(&s, 1).is_empty());
        // Unavailable old pods are replaced anyway; empty nodes count as unavailable.
        let s = slots(&[("a", &[]), ("b", &[("pb", false, false)]), ("c", &[("pc", false, true)])]);
        assert_eq!(roll_without_surge(&s, 1), ["pb"]);
        // Done: nothing to delete.
        let s = slots(&[("a", &[("pa", true, true)])]);
        assert!(roll_without_surge(&s, 1).is_empty());
    }

    #[test]
    fn rolling_with_surge_creates_first_and_deletes_when_available() {
        let s = slots(&[("a", &[("pa", false, true)]), ("b", &[("pb", false, true)]), ("c", &[("pc", false, false)])]);
        let (del, create) = roll_with_surge(&s, |_| true, 1, 3);
        assert!(del.is_empty());
        // c's old pod is unavailable: replaced at once; plus one surge candidate.
        assert_eq!(create, ["c", "a"]);
        let s = slots(&[("a", &[("na", true, true), ("pa", false, true)]), ("b", &[("nb", true, false), ("pb", false, true)]), ("c", &[("pc", false, true)])]);
        let (del, create) = roll_with_surge(&s, |_| true, 1, 3);
        assert_eq!(del, ["pa"]);
        assert!(create.is_empty(), "b is still surging: {create:?}");
    }
}
