//! StatefulSet controller: pods with stable names `<set>-<ordinal>` (from `.spec.ordinals.start`),
//! their own PersistentVolumeClaims from `volumeClaimTemplates` (`<template>-<set>-<ordinal>`,
//! created before the pod and kept by default), created in ordinal order and each only after
//! its predecessors are Running and Ready (OrderedReady) or all at once (Parallel), removed from
//! the highest ordinal down. Template changes roll from the highest ordinal down to the
//! partition, one pod at a time (RollingUpdate), or wait for pods to be deleted (OnDelete).
//! Templates are ControllerRevisions (history.rs); pods carry their revision's name in the
//! `controller-revision-hash` label, as upstream.
//!
//! Pods are listed live from the API on each sync, as the ReplicaSet controller does.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::history::{self, HASH_LABEL};
use crate::util::{controller_ref, owner_ref, pod_available, pod_ready, selector_matches};

const COMPONENT: &str = "statefulset-controller";
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

struct Ctx {
    client: Client,
}

pub async fn run(client: Client, inf: Arc<crate::informer::Informers>) -> anyhow::Result<()> {
    let ctl = Controller::new(Api::<StatefulSet>::all(client.clone()), watcher::Config::default());
    let store = ctl.store();
    let ctl = ctl.watches_shared_stream(inf.pods.subscribe(), move |pod: Arc<Pod>| crate::daemonset::pod_owners::<StatefulSet>(&store.state(), &pod, |s| s.spec.as_ref().map(|s| &s.selector)));
    crate::util::drain("statefulset", ctl.run(reconcile, crate::util::error_policy, Arc::new(Ctx { client }))).await;
    Ok(())
}

async fn reconcile(sts: Arc<StatefulSet>, ctx: Arc<Ctx>) -> Result<Action, crate::Error> {
    Ok(sync(&sts, &ctx.client).await?)
}

// ---------------------------------------------------------------- decisions (pure)

/// The ordinal of a pod named `<set>-<n>` belonging to `set`.
pub fn ordinal(set: &str, pod_name: &str) -> Option<i32> {
    let rest = pod_name.strip_prefix(set)?.strip_prefix('-')?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) || (rest.len() > 1 && rest.starts_with('0')) {
        return None;
    }
    rest.parse().ok()
}

/// A pod as the decisions see it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct View {
    /// Failed or Succeeded: to be replaced.
    pub finished: bool,
    pub terminating: bool,
    pub running_ready: bool,
    pub available: bool,
    pub revision: String,
}

impl View {
    fn healthy(&self) -> bool {
        self.running_ready && !self.terminating
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    Create(i32),
    Delete(i32),
}

/// What to do now, in order (upstream StatefulSetControl.updateStatefulSet): replace finished
/// pods and create missing ones in `range` ascending, then delete the ones outside it
/// descending, then roll one pod (highest ordinal >= `partition`) to `update_revision`. In
/// monotonic (OrderedReady) mode everything stops at the first pod that is not Running, Ready
/// and available, and at most one pod is created or deleted at a time.
pub fn plan(range: std::ops::Range<i32>, pods: &BTreeMap<i32, View>, monotonic: bool, partition: Option<i32>, update_revision: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    for ord in range.clone() {
        match pods.get(&ord) {
            Some(p) if p.finished => {
                if !p.terminating {
                    steps.push(Step::Delete(ord));
                }
                if monotonic {
                    return steps;
                }
            }
            None => {
                steps.push(Step::Create(ord));
                if monotonic {
                    return steps;
                }
            }
            Some(p) => {
                if monotonic && (p.terminating || !p.running_ready || !p.available) {
                    return steps;
                }
            }
        }
    }
    let condemned: Vec<(i32, &View)> = pods.iter().rev().filter(|(o, _)| !range.contains(o)).map(|(o, v)| (*o, v)).collect();
    let first_unhealthy = range.clone().filter_map(|o| pods.get(&o).map(|v| (o, v))).chain(condemned.iter().copied()).find(|(_, v)| !v.healthy()).map(|(o, _)| o);
    for (ord, p) in &condemned {
        if p.terminating {
            if monotonic {
                return steps;
            }
            continue;
        }
        if monotonic && (!p.running_ready || !p.available) && first_unhealthy != Some(*ord) {
            return steps;
        }
        steps.push(Step::Delete(*ord));
        if monotonic {
            return steps;
        }
    }
    if let Some(partition) = partition {
        for ord in range.clone().rev().take_while(|o| *o >= partition) {
            let Some(p) = pods.get(&ord) else { return steps };
            if p.revision != update_revision && !p.terminating {
                if !steps.contains(&Step::Delete(ord)) {
                    steps.push(Step::Delete(ord));
                }
                return steps;
            }
            if !p.healthy() {
                return steps;
            }
        }
    }
    steps
}

/// The claims of pod `ordinal`: each template named `<template>-<set>-<ordinal>`, with the
/// set's matchLabels added to the template's labels (upstream getPersistentVolumeClaims).
pub fn claims_for(sts: &StatefulSet, ordinal: i32) -> Vec<(String, PersistentVolumeClaim)> {
    let Some(spec) = sts.spec.as_ref() else { return Vec::new() };
    let set = sts.name_any();
    spec.volume_claim_templates
        .iter()
        .flatten()
        .map(|t| {
            let tname = t.metadata.name.clone().unwrap_or_default();
            let mut claim = t.clone();
            claim.metadata.name = Some(format!("{tname}-{set}-{ordinal}"));
            claim.metadata.namespace = sts.namespace();
            let labels = claim.metadata.labels.get_or_insert_with(Default::default);
            for (k, v) in spec.selector.match_labels.iter().flatten() {
                labels.insert(k.clone(), v.clone());
            }
            claim.status = None;
            (tname, claim)
        })
        .collect()
}

/// Pod `ordinal` from `template` at `revision` (upstream newVersionedStatefulSetPod): identity
/// labels, hostname and subdomain, claim volumes replacing same-named template volumes.
pub fn new_pod(sts: &StatefulSet, template: &PodTemplateSpec, revision: &str, ordinal: i32) -> anyhow::Result<Pod> {
    let set = sts.name_any();
    let name = format!("{set}-{ordinal}");
    let tm = template.metadata.clone().unwrap_or_default();
    let mut labels = tm.labels.unwrap_or_default();
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    labels.insert(HASH_LABEL.into(), revision.into());
    let mut spec = template.spec.clone().unwrap_or_default();
    spec.hostname = Some(name.clone());
    if let Some(svc) = sts.spec.as_ref().and_then(|s| s.service_name.as_ref()).filter(|s| !s.is_empty()) {
        spec.subdomain = Some(svc.clone());
    }
    let claims = claims_for(sts, ordinal);
    if !claims.is_empty() {
        let mut volumes: Vec<Volume> = spec.volumes.take().unwrap_or_default().into_iter().filter(|v| !claims.iter().any(|(t, _)| *t == v.name)).collect();
        for (t, claim) in &claims {
            volumes.push(Volume { name: t.clone(), persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource { claim_name: claim.metadata.name.clone().unwrap_or_default(), read_only: None }), ..Default::default() });
        }
        spec.volumes = Some(volumes);
    }
    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: sts.namespace(),
            labels: Some(labels),
            annotations: tm.annotations,
            finalizers: tm.finalizers,
            owner_references: Some(vec![owner_ref(sts).context("StatefulSet without name or uid")?]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    })
}

fn view(p: &Pod, min_ready: i32, now: jiff::Timestamp) -> View {
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("");
    View {
        finished: phase == "Failed" || phase == "Succeeded",
        terminating: p.metadata.deletion_timestamp.is_some(),
        running_ready: phase == "Running" && pod_ready(p),
        available: phase == "Running" && pod_available(p, min_ready, now),
        revision: p.labels().get(HASH_LABEL).cloned().unwrap_or_default(),
    }
}

// ---------------------------------------------------------------- sync

async fn sync(sts: &StatefulSet, client: &Client) -> anyhow::Result<Action> {
    let name = sts.name_any();
    let ns = sts.namespace().context("StatefulSet without namespace")?;
    let uid = sts.metadata.uid.clone().context("StatefulSet without uid")?;
    let spec = sts.spec.as_ref().context("StatefulSet without spec")?;
    if sts.metadata.deletion_timestamp.is_some() {
        // The garbage collector removes the pods (and claims the retention policy gave us).
        return Ok(Action::await_change());
    }
    let sts_api = Api::<StatefulSet>::namespaced(client.clone(), &ns);
    let pods_api = Api::<Pod>::namespaced(client.clone(), &ns);
    let all = pods_api.list(&ListParams::default()).await.with_context(|| format!("list pods in {ns}"))?;
    let mut mine: BTreeMap<i32, Pod> = BTreeMap::new();
    for pod in all.items {
        let Some(ord) = ordinal(&name, &pod.name_any()) else { continue };
        let matches = selector_matches(&spec.selector, pod.metadata.labels.as_ref());
        match controller_ref(&pod.metadata) {
            Some(c) if c.uid == uid => {
                if matches {
                    mine.insert(ord, pod);
                } else {
                    crate::util::release_pod(&pods_api, &pod, &uid).await;
                }
            }
            None if matches && pod.metadata.deletion_timestamp.is_none() => {
                if let Some(p) = crate::util::adopt_pod(&pods_api, &pod, sts).await {
                    mine.insert(ord, p);
                }
            }
            _ => {}
        }
    }

    let collisions = sts.status.as_ref().and_then(|s| s.collision_count);
    let revs = history::sync(client, history::Parent { obj: sts, selector: &spec.selector, template: &spec.template, collision_count: collisions }, |n| {
        let api = sts_api.clone();
        let name = name.clone();
        async move {
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({"status": {"collisionCount": n}}))).await.context("bump collisionCount")?;
            Ok(())
        }
    })
    .await?;
    let update_rev: &ControllerRevision = &revs.current;
    let update_name = update_rev.name_any();
    let old_current = sts.status.as_ref().and_then(|s| s.current_revision.clone()).unwrap_or_default();
    let current_rev: &ControllerRevision = revs.others.iter().find(|r| r.name_any() == old_current).unwrap_or(update_rev);
    let current_name = current_rev.name_any();
    let current_template = history::revision_template(current_rev).unwrap_or_else(|| spec.template.clone());

    let start = spec.ordinals.as_ref().and_then(|o| o.start).unwrap_or(0).max(0);
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let range = start..start.saturating_add(replicas);
    let monotonic = spec.pod_management_policy.as_deref() != Some("Parallel");
    let strategy = spec.update_strategy.as_ref();
    let rolling = strategy.and_then(|s| s.type_.as_deref()).unwrap_or("RollingUpdate") == "RollingUpdate";
    let partition = rolling.then(|| strategy.and_then(|s| s.rolling_update.as_ref()).and_then(|r| r.partition).unwrap_or(0));
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let now = jiff::Timestamp::now();
    let views: BTreeMap<i32, View> = mine.iter().map(|(o, p)| (*o, view(p, min_ready, now))).collect();

    // Status describes the pods as listed (upstream counts before acting, too).
    let mut status = StatefulSetStatus {
        observed_generation: sts.metadata.generation,
        collision_count: collisions,
        conditions: sts.status.as_ref().and_then(|s| s.conditions.clone()),
        current_revision: Some(current_name.clone()),
        update_revision: Some(update_name.clone()),
        ..Default::default()
    };
    let (mut ready, mut available, mut current, mut updated) = (0, 0, 0, 0);
    for v in views.values() {
        status.replicas += 1;
        if v.running_ready {
            ready += 1;
            if v.available {
                available += 1;
            }
        }
        if !v.terminating {
            current += i32::from(v.revision == current_name);
            updated += i32::from(v.revision == update_name);
        }
    }
    status.ready_replicas = Some(ready);
    status.available_replicas = Some(available);
    status.current_replicas = Some(current);
    status.updated_replicas = Some(updated);
    if rolling && updated == status.replicas && ready == status.replicas && status.replicas == replicas {
        status.current_replicas = Some(updated);
        status.current_revision = Some(update_name.clone());
    }

    // Act.
    let steps = plan(range.clone(), &views, monotonic, partition, &update_name);
    let retention = spec.persistent_volume_claim_retention_policy.as_ref();
    let has_claims = spec.volume_claim_templates.as_ref().is_some_and(|v| !v.is_empty());
    let pvc_api = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns);
    let claims = Claims {
        existing: if has_claims { pvc_api.list(&ListParams::default()).await.with_context(|| format!("list claims in {ns}"))?.items.into_iter().map(|c| (c.name_any(), c)).collect() } else { BTreeMap::new() },
        api: pvc_api,
        sts,
        set_ref: set_ref(sts).context("StatefulSet without name or uid")?,
        delete_with_set: retention.and_then(|r| r.when_deleted.as_deref()) == Some("Delete"),
        delete_on_scale: retention.and_then(|r| r.when_scaled.as_deref()) == Some("Delete"),
    };
    // Identity labels a pod lost (or an adopted pod never had), as upstream's updateIdentity.
    for (ord, p) in mine.iter().filter(|(o, p)| range.contains(*o) && p.metadata.deletion_timestamp.is_none()) {
        let want = [(POD_NAME_LABEL, p.name_any()), (POD_INDEX_LABEL, ord.to_string())];
        if want.iter().any(|(k, v)| p.labels().get(*k) != Some(v)) {
            let labels: serde_json::Map<String, serde_json::Value> = want.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
            pods_api
                .patch(&p.name_any(), &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": labels, "resourceVersion": p.metadata.resource_version}})))
                .await
                .with_context(|| format!("restore the identity labels of pod {ns}/{}", p.name_any()))?;
        }
    }
    if has_claims {
        for (ord, p) in mine.iter().filter(|(_, p)| p.metadata.deletion_timestamp.is_none()) {
            claims.fix_owners(*ord, p, !range.contains(ord)).await?;
            // Pending pods get claims that went missing.
            if range.contains(ord) && p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending") == "Pending" {
                claims.create_missing(client, *ord, &p.name_any()).await?;
            }
        }
    }
    for step in &steps {
        match *step {
            Step::Create(ord) => {
                let (template, rev) = if partition.is_some_and(|p| ord < p) { (&current_template, &current_name) } else { (&spec.template, &update_name) };
                let pod = new_pod(sts, template, rev, ord)?;
                let pname = pod.name_any();
                claims.create_missing(client, ord, &pname).await?;
                match pods_api.create(&PostParams::default(), &pod).await {
                    Ok(_) => crate::events::normal(client, COMPONENT, sts, "SuccessfulCreate", format!("create Pod {pname} in StatefulSet {name} successful")).await,
                    Err(e) if crate::util::is_status(&e, 409) => {}
                    Err(e) => {
                        crate::events::record(client, COMPONENT, sts, "Warning", "FailedCreate", format!("create Pod {pname} in StatefulSet {name} failed error: {e}")).await;
                        return Err(e).with_context(|| format!("create pod {ns}/{pname}"));
                    }
                }
            }
            Step::Delete(ord) => {
                let Some(pod) = mine.get(&ord) else { continue };
                let pname = pod.name_any();
                match pods_api.delete(&pname, &DeleteParams::default()).await {
                    Ok(_) => crate::events::normal(client, COMPONENT, sts, "SuccessfulDelete", format!("delete Pod {pname} in StatefulSet {name} successful")).await,
                    Err(e) if crate::util::is_not_found(&e) => {}
                    Err(e) => {
                        crate::events::record(client, COMPONENT, sts, "Warning", "FailedDelete", format!("delete Pod {pname} in StatefulSet {name} failed error: {e}")).await;
                        return Err(e).with_context(|| format!("delete pod {ns}/{pname}"));
                    }
                }
            }
        }
    }
    // History beyond revisionHistoryLimit, except the current and update revisions and what
    // live pods run.
    let mut live: HashSet<String> = views.values().map(|v| v.revision.clone()).collect();
    live.insert(current_name.clone());
    let limit = spec.revision_history_limit.unwrap_or(10);
    let victims = history::to_prune(&revs.others, limit, |cr| live.contains(&cr.name_any()));
    history::prune(client, &ns, &victims).await;

    let old = sts.status.clone().unwrap_or_default();
    if status != old {
        sts_api.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({"status": status}))).await.with_context(|| format!("update status of statefulset {ns}/{name}"))?;
    }
    if min_ready > 0 && ready > available {
        return Ok(Action::requeue(Duration::from_secs(min_ready as u64 + 1)));
    }
    Ok(Action::await_change())
}

fn set_ref(sts: &StatefulSet) -> Option<OwnerReference> {
    let m = sts.meta();
    Some(OwnerReference { api_version: StatefulSet::api_version(&()).into_owned(), kind: StatefulSet::kind(&()).into_owned(), name: m.name.clone()?, uid: m.uid.clone()?, controller: None, block_owner_deletion: None })
}

/// The owner references a pod's claim should carry under the retention policy (upstream
/// updateClaimOwnerRefForSetAndPod): the set when whenDeleted is Delete, the pod instead while
/// it is being scaled away and whenScaled is Delete; other owners are kept.
pub fn claim_owners(current: &[OwnerReference], set: &OwnerReference, pod: &OwnerReference, delete_with_set: bool, delete_on_scale: bool, scaled_down: bool) -> Vec<OwnerReference> {
    let mut out: Vec<OwnerReference> = current.iter().filter(|r| r.uid != set.uid && !(r.kind == "Pod" && r.name == pod.name)).cloned().collect();
    let by_pod = scaled_down && delete_on_scale;
    if by_pod {
        out.push(pod.clone());
    } else if delete_with_set {
        out.push(set.clone());
    }
    out
}

fn refs_equal(a: &[OwnerReference], b: &[OwnerReference]) -> bool {
    let key = |r: &OwnerReference| (r.uid.clone(), r.kind.clone());
    let mut x: Vec<_> = a.iter().map(key).collect();
    let mut y: Vec<_> = b.iter().map(key).collect();
    x.sort();
    y.sort();
    x == y
}

/// The retention policy as it applies to one set.
struct Claims<'a> {
    api: Api<PersistentVolumeClaim>,
    sts: &'a StatefulSet,
    set_ref: OwnerReference,
    delete_with_set: bool,
    delete_on_scale: bool,
    /// The namespace's claims by name, as listed at the start of the sync.
    existing: BTreeMap<String, PersistentVolumeClaim>,
}

impl Claims<'_> {
    /// Creates pod `ordinal`'s missing claims (before the pod, as upstream).
    async fn create_missing(&self, client: &Client, ordinal: i32, pod_name: &str) -> anyhow::Result<()> {
        let set = self.sts.name_any();
        let ns = self.sts.namespace().unwrap_or_default();
        for (_, mut claim) in claims_for(self.sts, ordinal) {
            let cname = claim.metadata.name.clone().unwrap_or_default();
            if self.existing.contains_key(&cname) {
                continue;
            }
            if self.delete_with_set {
                claim.metadata.owner_references = Some(vec![self.set_ref.clone()]);
            }
            match self.api.create(&PostParams::default(), &claim).await {
                Ok(_) => crate::events::normal(client, COMPONENT, self.sts, "SuccessfulCreate", format!("create Claim {cname} Pod {pod_name} in StatefulSet {set} success")).await,
                Err(e) if crate::util::is_status(&e, 409) => {}
                Err(e) => {
                    crate::events::record(client, COMPONENT, self.sts, "Warning", "FailedCreate", format!("create Claim {cname} for Pod {pod_name} in StatefulSet {set} failed error: {e}")).await;
                    return Err(e).with_context(|| format!("create claim {ns}/{cname}"));
                }
            }
        }
        Ok(())
    }

    /// Gives the existing claims of `pod` the owners the policy asks for.
    async fn fix_owners(&self, ordinal: i32, pod: &Pod, scaled_down: bool) -> anyhow::Result<()> {
        let Some(uid) = pod.metadata.uid.clone() else { return Ok(()) };
        let pod_ref = OwnerReference { api_version: "v1".into(), kind: "Pod".into(), name: pod.name_any(), uid, controller: None, block_owner_deletion: None };
        for (_, claim) in claims_for(self.sts, ordinal) {
            let cname = claim.metadata.name.clone().unwrap_or_default();
            let Some(existing) = self.existing.get(&cname) else { continue };
            let have = existing.metadata.owner_references.clone().unwrap_or_default();
            let want = claim_owners(&have, &self.set_ref, &pod_ref, self.delete_with_set, self.delete_on_scale, scaled_down);
            if refs_equal(&have, &want) {
                continue;
            }
            let refs = if want.is_empty() { serde_json::Value::Null } else { json!(want) };
            self.api
                .patch(&cname, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"ownerReferences": refs, "resourceVersion": existing.metadata.resource_version}})))
                .await
                .with_context(|| format!("set the owners of claim {cname}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(rev: &str) -> View {
        View { finished: false, terminating: false, running_ready: true, available: true, revision: rev.into() }
    }

    fn pending(rev: &str) -> View {
        View { running_ready: false, available: false, ..ok(rev) }
    }

    fn pods(v: &[(i32, View)]) -> BTreeMap<i32, View> {
        v.iter().cloned().collect()
    }

    #[test]
    fn ordinals_parse_only_own_pods() {
        assert_eq!(ordinal("web", "web-0"), Some(0));
        assert_eq!(ordinal("web", "web-12"), Some(12));
        assert_eq!(ordinal("web", "web-x"), None);
        assert_eq!(ordinal("web", "webby-1"), None);
        assert_eq!(ordinal("web", "web-"), None);
        assert_eq!(ordinal("web", "web-01"), None);
        assert_eq!(ordinal("web", "web-1-2"), None);
        assert_eq!(ordinal("web-1", "web-1-2"), Some(2));
    }

    #[test]
    fn ordered_ready_creates_one_at_a_time_after_the_previous_is_ready() {
        assert_eq!(plan(0..3, &pods(&[]), true, Some(0), "r1"), [Step::Create(0)]);
        assert_eq!(plan(0..3, &pods(&[(0, pending("r1"))]), true, Some(0), "r1"), []);
        assert_eq!(plan(0..3, &pods(&[(0, ok("r1"))]), true, Some(0), "r1"), [Step::Create(1)]);
        // Parallel: everything missing at once.
        assert_eq!(plan(0..3, &pods(&[(0, pending("r1"))]), false, Some(0), "r1"), [Step::Create(1), Step::Create(2)]);
        // The start ordinal shifts the names.
        assert_eq!(plan(5..7, &pods(&[(5, ok("r1"))]), true, Some(0), "r1"), [Step::Create(6)]);
    }

    #[test]
    fn scale_down_removes_the_highest_ordinal_first_one_at_a_time() {
        let all = pods(&[(0, ok("r1")), (1, ok("r1")), (2, ok("r1")), (3, ok("r1"))]);
        assert_eq!(plan(0..2, &all, true, Some(0), "r1"), [Step::Delete(3)]);
        let mut terminating = all.clone();
        terminating.get_mut(&3).unwrap().terminating = true;
        assert_eq!(plan(0..2, &terminating, true, Some(0), "r1"), []);
        assert_eq!(plan(0..2, &all, false, Some(0), "r1"), [Step::Delete(3), Step::Delete(2)]);
        // An unhealthy pod lower down blocks an ordered scale-down unless it is the one going.
        let blocked = pods(&[(0, pending("r1")), (1, ok("r1")), (2, ok("r1"))]);
        assert_eq!(plan(0..1, &blocked, true, Some(0), "r1"), []);
        let top_unhealthy = pods(&[(0, ok("r1")), (1, ok("r1")), (2, pending("r1"))]);
        assert_eq!(plan(0..1, &top_unhealthy, true, Some(0), "r1"), [Step::Delete(2)]);
    }

    #[test]
    fn finished_pods_are_deleted_to_be_recreated() {
        let failed = View { finished: true, running_ready: false, available: false, ..ok("r1") };
        assert_eq!(plan(0..2, &pods(&[(0, failed.clone()), (1, ok("r1"))]), true, Some(0), "r1"), [Step::Delete(0)]);
        let going = View { terminating: true, ..failed };
        assert_eq!(plan(0..2, &pods(&[(0, going), (1, ok("r1"))]), true, Some(0), "r1"), []);
    }

    #[test]
    fn rolling_update_goes_down_to_the_partition_one_healthy_pod_at_a_time() {
        let old = pods(&[(0, ok("r1")), (1, ok("r1")), (2, ok("r1"))]);
        assert_eq!(plan(0..3, &old, true, Some(0), "r2"), [Step::Delete(2)]);
        let mut next = old.clone();
        next.insert(2, ok("r2"));
        assert_eq!(plan(0..3, &next, true, Some(0), "r2"), [Step::Delete(1)]);
        // Pod 2 recreated but not ready yet: wait.
        next.insert(2, pending("r2"));
        assert_eq!(plan(0..3, &next, false, Some(0), "r2"), []);
        // Partition 2: only ordinal 2 is updated.
        let mut done = old.clone();
        done.insert(2, ok("r2"));
        assert_eq!(plan(0..3, &old, true, Some(2), "r2"), [Step::Delete(2)]);
        assert_eq!(plan(0..3, &done, true, Some(2), "r2"), []);
        // OnDelete: nothing rolls.
        assert_eq!(plan(0..3, &old, true, None, "r2"), []);
    }

    #[test]
    fn claim_owners_follow_the_retention_policy() {
        let r = |kind: &str, name: &str, uid: &str| OwnerReference { api_version: "v1".into(), kind: kind.into(), name: name.into(), uid: uid.into(), controller: None, block_owner_deletion: None };
        let (set, pod, other) = (r("StatefulSet", "web", "s"), r("Pod", "web-1", "p2"), r("ConfigMap", "x", "c"));
        let uids = |v: Vec<OwnerReference>| v.into_iter().map(|r| r.uid).collect::<Vec<_>>();
        // Retain/Retain: ours removed, others kept.
        assert_eq!(uids(claim_owners(&[other.clone(), set.clone()], &set, &pod, false, false, false)), ["c"]);
        // whenDeleted Delete: the set owns it.
        assert_eq!(uids(claim_owners(&[], &set, &pod, true, false, false)), ["s"]);
        // whenScaled Delete, scaled away: the pod instead of the set; a stale pod ref is replaced.
        let stale = r("Pod", "web-1", "p1");
        assert_eq!(uids(claim_owners(&[set.clone(), stale.clone()], &set, &pod, true, true, true)), ["p2"]);
        // Back in range: the pod reference goes again.
        assert_eq!(uids(claim_owners(&[stale], &set, &pod, true, true, false)), ["s"]);
        assert!(claim_owners(std::slice::from_ref(&pod), &set, &pod, false, true, false).is_empty());
    }

    fn sts(v: serde_json::Value) -> StatefulSet {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn pods_get_identity_and_claims() {
        let s = sts(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u1"},
            "spec": {
                "serviceName": "nginx",
                "selector": {"matchLabels": {"app": "nginx"}},
                "template": {"metadata": {"labels": {"app": "nginx"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}], "volumes": [{"name": "www", "emptyDir": {}}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "www", "labels": {"tier": "data"}}, "spec": {"accessModes": ["ReadWriteOnce"]}}]
            }
        }));
        let claims = claims_for(&s, 2);
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0].1.metadata.name.as_deref(), Some("www-web-2"));
        let l = claims[0].1.metadata.labels.clone().unwrap();
        assert_eq!((l["tier"].as_str(), l["app"].as_str()), ("data", "nginx"));
        let t = s.spec.as_ref().unwrap().template.clone();
        let p = new_pod(&s, &t, "web-abc", 2).unwrap();
        let labels = p.metadata.labels.clone().unwrap();
        assert_eq!(p.metadata.name.as_deref(), Some("web-2"));
        assert_eq!(labels[POD_NAME_LABEL], "web-2");
        assert_eq!(labels[POD_INDEX_LABEL], "2");
        assert_eq!(labels[HASH_LABEL], "web-abc");
        let spec = p.spec.unwrap();
        assert_eq!((spec.hostname.as_deref(), spec.subdomain.as_deref()), (Some("web-2"), Some("nginx")));
        let vols = spec.volumes.unwrap();
        assert_eq!(vols.len(), 1, "the claim replaces the same-named volume");
        assert_eq!(vols[0].persistent_volume_claim.as_ref().unwrap().claim_name, "www-web-2");
        assert_eq!(p.metadata.owner_references.unwrap()[0].kind, "StatefulSet");
    }
}
