//! Deployment controller: one ReplicaSet per pod template (`<deployment>-<hash>`), rolled
//! from old to new by the RollingUpdate or Recreate strategy, with the status and conditions
//! that `kubectl rollout status` reads.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{json, Value};

use crate::util::{controller_ref, owner_ref};

const COMPONENT: &str = "deployment-controller";
pub const HASH_LABEL: &str = "pod-template-hash";
pub const REVISION: &str = "deployment.kubernetes.io/revision";
const DESIRED: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";
/// Deployment annotations not copied onto its ReplicaSets (upstream annotationsToSkip).
const SKIP_ANNOTATIONS: &[&str] = &["kubectl.kubernetes.io/last-applied-configuration", REVISION, "deployment.kubernetes.io/revision-history", DESIRED, MAX_REPLICAS, "deprecated.deployment.rollback.to"];

struct Ctx {
    client: Client,
}

pub async fn run(client: Client) -> anyhow::Result<()> {
    let ctl = Controller::new(Api::<Deployment>::all(client.clone()), watcher::Config::default()).owns(Api::<ReplicaSet>::all(client.clone()), watcher::Config::default());
    crate::util::drain("deployment", ctl.run(reconcile, crate::util::error_policy, Arc::new(Ctx { client }))).await;
    Ok(())
}

async fn reconcile(d: Arc<Deployment>, ctx: Arc<Ctx>) -> Result<Action, crate::Error> {
    Ok(sync(&d, &ctx.client).await?)
}

/// A ReplicaSet as the rollout arithmetic sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Counts {
    pub replicas: i32,
    pub available: i32,
}

fn counts(rs: &ReplicaSet) -> Counts {
    Counts { replicas: spec_replicas(rs), available: rs.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0) }
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.annotations().get(REVISION).and_then(|r| r.parse().ok()).unwrap_or(0)
}

async fn sync(d: &Deployment, client: &Client) -> anyhow::Result<Action> {
    let ns = d.namespace().context("Deployment without namespace")?;
    let uid = d.metadata.uid.clone().context("Deployment without uid")?;
    let spec = d.spec.as_ref().context("Deployment without spec")?;
    if d.metadata.deletion_timestamp.is_some() {
        // The garbage collector removes the ReplicaSets.
        return Ok(Action::await_change());
    }
    let rs_api = Api::<ReplicaSet>::namespaced(client.clone(), &ns);
    let list = rs_api.list(&ListParams::default()).await.with_context(|| format!("list replicasets in {ns}"))?;
    let mut rss: Vec<ReplicaSet> = list.items.into_iter().filter(|rs| controller_ref(&rs.metadata).map(|c| c.uid == uid).unwrap_or(false) && rs.metadata.deletion_timestamp.is_none()).collect();
    rss.sort_by_key(|rs| rs.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let desired = spec.replicas.unwrap_or(1);
    let template = &spec.template;
    let new_idx = rss.iter().position(|rs| rs.spec.as_ref().and_then(|s| s.template.as_ref()).map(|t| equal_ignoring_hash(t, template)).unwrap_or(false));
    let mut new_rs = new_idx.map(|i| rss.remove(i));
    let mut olds = rss;
    let max_old_revision = olds.iter().map(revision).max().unwrap_or(0);

    if spec.paused == Some(true) {
        sync_status(client, d, new_rs.as_ref(), &olds, Progress::Paused).await?;
        return Ok(Action::await_change());
    }

    let strategy = spec.strategy.as_ref();
    let recreate = strategy.and_then(|s| s.type_.as_deref()) == Some("Recreate");
    let rolling = strategy.and_then(|s| s.rolling_update.as_ref());
    let (max_surge, max_unavailable) = if recreate { (0, 0) } else { resolve_fenceposts(rolling.and_then(|r| r.max_surge.as_ref()), rolling.and_then(|r| r.max_unavailable.as_ref()), desired)? };

    let mut progress = Progress::None;
    if recreate {
        // Old pods must be gone before new ones start.
        let mut scaled = false;
        for rs in olds.iter_mut().filter(|rs| spec_replicas(rs) > 0) {
            scale(client, d, rs, 0, max_surge).await?;
            scaled = true;
        }
        let old_pods = olds.iter().map(|rs| rs.status.as_ref().map(|s| s.replicas).unwrap_or(0)).sum::<i32>();
        if scaled || old_pods > 0 {
            sync_status(client, d, new_rs.as_ref(), &olds, Progress::None).await?;
            return Ok(Action::requeue(Duration::from_secs(5)));
        }
    }

    let new_revision = max_old_revision + 1;
    let new_rs = match new_rs.take() {
        Some(mut rs) => {
            if revision(&rs) < new_revision {
                // A rollback to an old template: that ReplicaSet becomes the newest revision.
                bump_revision(&rs_api, d, &mut rs, new_revision).await?;
            }
            rs
        }
        None => {
            let total: i32 = olds.iter().map(spec_replicas).sum();
            let initial = if recreate { desired } else { new_rs_replicas(desired, max_surge, total, 0) };
            let rs = create_new_rs(client, d, new_revision, initial, max_surge).await?;
            progress = Progress::Created;
            rs
        }
    };
    set_deployment_revision(client, d, &new_rs).await?;

    // Scale the new ReplicaSet up (within maxSurge) or down to the desired count.
    let cur = spec_replicas(&new_rs);
    let target = if recreate || cur > desired { desired } else { new_rs_replicas(desired, max_surge, cur + olds.iter().map(spec_replicas).sum::<i32>(), cur) };
    let mut new_rs = new_rs;
    if target != cur {
        scale(client, d, &mut new_rs, target, max_surge).await?;
        sync_status(client, d, Some(&new_rs), &olds, progress).await?;
        return Ok(requeue_while_progressing(d));
    }

    if !recreate {
        let old_counts: Vec<Counts> = olds.iter().map(counts).collect();
        let targets = old_targets(desired, max_unavailable, counts(&new_rs), &old_counts);
        let mut scaled = false;
        for (rs, t) in olds.iter_mut().zip(targets) {
            if t != spec_replicas(rs) {
                scale(client, d, rs, t, max_surge).await?;
                scaled = true;
            }
        }
        if scaled {
            sync_status(client, d, Some(&new_rs), &olds, progress).await?;
            return Ok(requeue_while_progressing(d));
        }
    }

    let status = sync_status(client, d, Some(&new_rs), &olds, progress).await?;
    if complete(d, &status) {
        cleanup(client, d, &olds).await;
        return Ok(Action::await_change());
    }
    Ok(requeue_while_progressing(d))
}

/// Come back when the progress deadline may have passed, which no watch event announces.
fn requeue_while_progressing(d: &Deployment) -> Action {
    let secs = d.spec.as_ref().and_then(|s| s.progress_deadline_seconds).unwrap_or(600).clamp(1, 30);
    Action::requeue(Duration::from_secs(secs as u64 + 1))
}

fn rs_annotations(d: &Deployment, revision: i64, desired: i32, max_surge: i32) -> BTreeMap<String, String> {
    let mut a: BTreeMap<String, String> = d.annotations().iter().filter(|(k, _)| !SKIP_ANNOTATIONS.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect();
    a.insert(REVISION.into(), revision.to_string());
    a.insert(DESIRED.into(), desired.to_string());
    a.insert(MAX_REPLICAS.into(), (desired + max_surge).to_string());
    a
}

async fn create_new_rs(client: &Client, d: &Deployment, revision: i64, replicas: i32, max_surge: i32) -> anyhow::Result<ReplicaSet> {
    let ns = d.namespace().unwrap_or_default();
    let spec = d.spec.as_ref().context("Deployment without spec")?;
    let collisions = d.status.as_ref().and_then(|s| s.collision_count);
    let hash = template_hash(&spec.template, collisions);
    let name = format!("{}-{hash}", d.name_any());
    let mut template = spec.template.clone();
    let tm = template.metadata.get_or_insert_with(Default::default);
    tm.labels.get_or_insert_with(Default::default).insert(HASH_LABEL.into(), hash.clone());
    let mut selector: LabelSelector = spec.selector.clone();
    selector.match_labels.get_or_insert_with(Default::default).insert(HASH_LABEL.into(), hash.clone());
    let desired = spec.replicas.unwrap_or(1);
    let rs = ReplicaSet {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            labels: tm.labels.clone(),
            annotations: Some(rs_annotations(d, revision, desired, max_surge)),
            owner_references: Some(vec![owner_ref(d).context("Deployment without name or uid")?]),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec { replicas: Some(replicas), min_ready_seconds: spec.min_ready_seconds, selector, template: Some(template) }),
        status: None,
    };
    let api = Api::<ReplicaSet>::namespaced(client.clone(), &ns);
    match api.create(&PostParams::default(), &rs).await {
        Ok(created) => {
            tracing::info!(deployment = %d.name_any(), rs = %name, replicas, "created replica set");
            if replicas > 0 {
                crate::events::normal(client, COMPONENT, d, "ScalingReplicaSet", format!("Scaled up replica set {name} to {replicas} from 0")).await;
            }
            Ok(created)
        }
        Err(e) if crate::util::is_status(&e, 409) => {
            // Ours already (a stale cache of our own create), or a hash collision: then bump
            // collisionCount so the next attempt hashes to another name.
            let existing = api.get(&name).await.with_context(|| format!("get replicaset {ns}/{name}"))?;
            let ours = controller_ref(&existing.metadata).map(|c| Some(&c.uid) == d.metadata.uid.as_ref()).unwrap_or(false);
            if ours && existing.spec.as_ref().and_then(|s| s.template.as_ref()).map(|t| equal_ignoring_hash(t, &spec.template)).unwrap_or(false) {
                return Ok(existing);
            }
            let n = collisions.unwrap_or(0) + 1;
            Api::<Deployment>::namespaced(client.clone(), &ns)
                .patch_status(&d.name_any(), &PatchParams::default(), &Patch::Merge(json!({"status": {"collisionCount": n}})))
                .await
                .context("bump collisionCount")?;
            anyhow::bail!("replica set name {name} collides; collisionCount now {n}")
        }
        Err(e) => Err(e).with_context(|| format!("create replicaset {ns}/{name}")),
    }
}

async fn bump_revision(api: &Api<ReplicaSet>, d: &Deployment, rs: &mut ReplicaSet, revision: i64) -> anyhow::Result<()> {
    let mut ann = json!({ REVISION: revision.to_string() });
    if let Some(cause) = d.annotations().get(CHANGE_CAUSE) {
        ann[CHANGE_CAUSE] = json!(cause);
    }
    *rs = api.patch(&rs.name_any(), &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": ann}}))).await.with_context(|| format!("set revision of replicaset {}", rs.name_any()))?;
    Ok(())
}

/// The Deployment carries its newest revision (and that ReplicaSet's change-cause), which
/// `kubectl rollout history` and `describe` show.
async fn set_deployment_revision(client: &Client, d: &Deployment, rs: &ReplicaSet) -> anyhow::Result<()> {
    let rev = revision(rs).to_string();
    let mut ann = serde_json::Map::new();
    if d.annotations().get(REVISION) != Some(&rev) {
        ann.insert(REVISION.into(), json!(rev));
    }
    if let Some(cause) = rs.annotations().get(CHANGE_CAUSE) {
        if d.annotations().get(CHANGE_CAUSE) != Some(cause) {
            ann.insert(CHANGE_CAUSE.into(), json!(cause));
        }
    }
    if ann.is_empty() {
        return Ok(());
    }
    Api::<Deployment>::namespaced(client.clone(), &d.namespace().unwrap_or_default())
        .patch(&d.name_any(), &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": ann}})))
        .await
        .context("set deployment revision")?;
    Ok(())
}

async fn scale(client: &Client, d: &Deployment, rs: &mut ReplicaSet, to: i32, max_surge: i32) -> anyhow::Result<()> {
    let from = spec_replicas(rs);
    let rs_name = rs.name_any();
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let patch = json!({
        "metadata": {"annotations": {DESIRED: desired.to_string(), MAX_REPLICAS: (desired + max_surge).to_string()}},
        "spec": {"replicas": to},
    });
    *rs = Api::<ReplicaSet>::namespaced(client.clone(), &rs.namespace().unwrap_or_default())
        .patch(&rs_name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .with_context(|| format!("scale replicaset {rs_name} to {to}"))?;
    let dir = if to > from { "up" } else { "down" };
    tracing::info!(deployment = %d.name_any(), rs = %rs_name, from, to, "scaled replica set");
    crate::events::normal(client, COMPONENT, d, "ScalingReplicaSet", format!("Scaled {dir} replica set {rs_name} to {to} from {from}")).await;
    Ok(())
}

/// Deletes old, scaled-down ReplicaSets beyond revisionHistoryLimit, oldest revision first.
async fn cleanup(client: &Client, d: &Deployment, olds: &[ReplicaSet]) {
    let limit = d.spec.as_ref().and_then(|s| s.revision_history_limit).unwrap_or(10).max(0) as usize;
    let mut idle: Vec<&ReplicaSet> = olds.iter().filter(|rs| spec_replicas(rs) == 0 && rs.status.as_ref().map(|s| s.replicas).unwrap_or(0) == 0).collect();
    if idle.len() <= limit {
        return;
    }
    idle.sort_by_key(|rs| revision(rs));
    let api = Api::<ReplicaSet>::namespaced(client.clone(), &d.namespace().unwrap_or_default());
    for rs in &idle[..idle.len() - limit] {
        match api.delete(&rs.name_any(), &DeleteParams::background()).await {
            Ok(_) => tracing::info!(deployment = %d.name_any(), rs = %rs.name_any(), "deleted old replica set"),
            Err(e) if crate::util::is_not_found(&e) => {}
            Err(e) => tracing::warn!(rs = %rs.name_any(), error = %e, "deleting old replica set failed"),
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Progress {
    None,
    Created,
    Paused,
}

fn complete(d: &Deployment, s: &DeploymentStatus) -> bool {
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    s.updated_replicas == Some(desired) && s.replicas == Some(desired) && s.available_replicas == Some(desired) && s.observed_generation >= d.metadata.generation
}

fn set_condition(conds: &mut Vec<DeploymentCondition>, type_: &str, status: &str, reason: &str, message: String, keep_transition: bool) {
    let now = crate::util::now();
    let old = conds.iter().position(|c| c.type_ == type_).map(|i| conds.remove(i));
    let transition = match &old {
        Some(o) if o.status == status && (keep_transition || o.reason.as_deref() == Some(reason)) => o.last_transition_time.clone(),
        _ => Some(now.clone()),
    };
    conds.push(DeploymentCondition { type_: type_.into(), status: status.into(), reason: Some(reason.into()), message: Some(message), last_update_time: Some(now), last_transition_time: transition });
    conds.sort_by_key(|c| if c.type_ == "Available" { 0 } else { 1 });
}

/// Computes and writes status (upstream calculateStatus + syncRolloutStatus).
async fn sync_status(client: &Client, d: &Deployment, new_rs: Option<&ReplicaSet>, olds: &[ReplicaSet], progress: Progress) -> anyhow::Result<DeploymentStatus> {
    let spec = d.spec.as_ref().context("Deployment without spec")?;
    let desired = spec.replicas.unwrap_or(1);
    let all: Vec<&ReplicaSet> = new_rs.into_iter().chain(olds.iter()).collect();
    let sum = |f: &dyn Fn(&ReplicaSet) -> Option<i32>| all.iter().map(|rs| f(rs).unwrap_or(0)).sum::<i32>();
    let old = d.status.clone().unwrap_or_default();
    let mut s = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(sum(&|rs| rs.status.as_ref().map(|s| s.replicas))),
        updated_replicas: Some(new_rs.and_then(|rs| rs.status.as_ref()).map(|s| s.replicas).unwrap_or(0)),
        ready_replicas: Some(sum(&|rs| rs.status.as_ref().and_then(|s| s.ready_replicas))),
        available_replicas: Some(sum(&|rs| rs.status.as_ref().and_then(|s| s.available_replicas))),
        collision_count: old.collision_count,
        conditions: old.conditions.clone(),
        terminating_replicas: old.terminating_replicas,
        unavailable_replicas: None,
    };
    let available = s.available_replicas.unwrap_or(0);
    s.unavailable_replicas = Some((desired - available).max(0));
    let mut conds = s.conditions.take().unwrap_or_default();
    let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
    let max_unavailable = if recreate || desired == 0 {
        0
    } else {
        let r = spec.strategy.as_ref().and_then(|s| s.rolling_update.as_ref());
        resolve_fenceposts(r.and_then(|r| r.max_surge.as_ref()), r.and_then(|r| r.max_unavailable.as_ref()), desired)?.1.min(desired)
    };
    if available >= desired - max_unavailable {
        set_condition(&mut conds, "Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability.".into(), false);
    } else {
        set_condition(&mut conds, "Available", "False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability.".into(), false);
    }
    if let Some(i) = conds.iter().position(|c| c.type_ == "Available") {
        // Only write a new Available condition when it changed, so an idle Deployment is quiet.
        if let Some(prev) = old.conditions.iter().flatten().find(|c| c.type_ == "Available") {
            if prev.status == conds[i].status && prev.reason == conds[i].reason {
                conds[i] = prev.clone();
            }
        }
    }
    let rs_name = new_rs.map(|rs| rs.name_any()).unwrap_or_default();
    let cur = conds.iter().find(|c| c.type_ == "Progressing").cloned();
    let cur_reason = cur.as_ref().and_then(|c| c.reason.clone()).unwrap_or_default();
    match progress {
        Progress::Paused => {
            if cur_reason != "DeploymentPaused" {
                set_condition(&mut conds, "Progressing", "Unknown", "DeploymentPaused", "Deployment is paused".into(), false);
            }
        }
        _ if cur_reason == "DeploymentPaused" => set_condition(&mut conds, "Progressing", "Unknown", "DeploymentResumed", "Deployment is resumed".into(), false),
        Progress::Created => set_condition(&mut conds, "Progressing", "True", "NewReplicaSetCreated", format!("Created new replica set \"{rs_name}\""), true),
        Progress::None => {
            let done_before = s.replicas == s.updated_replicas && cur_reason == "NewReplicaSetAvailable";
            if !done_before && spec.progress_deadline_seconds.is_some() {
                let progressed = s.updated_replicas > old.updated_replicas
                    || s.ready_replicas > old.ready_replicas
                    || s.available_replicas > old.available_replicas
                    || s.replicas.unwrap_or(0) - s.updated_replicas.unwrap_or(0) < old.replicas.unwrap_or(0) - old.updated_replicas.unwrap_or(0);
                if complete(d, &s) {
                    set_condition(&mut conds, "Progressing", "True", "NewReplicaSetAvailable", format!("ReplicaSet \"{rs_name}\" has successfully progressed."), true);
                } else if progressed {
                    set_condition(&mut conds, "Progressing", "True", "ReplicaSetUpdated", format!("ReplicaSet \"{rs_name}\" is progressing."), true);
                } else if timed_out(cur.as_ref(), spec.progress_deadline_seconds.unwrap_or(600)) {
                    set_condition(&mut conds, "Progressing", "False", "ProgressDeadlineExceeded", format!("ReplicaSet \"{rs_name}\" has timed out progressing."), false);
                } else if cur.is_none() {
                    set_condition(&mut conds, "Progressing", "True", "ReplicaSetUpdated", format!("ReplicaSet \"{rs_name}\" is progressing."), true);
                }
            }
        }
    }
    s.conditions = Some(conds);
    if s != old {
        Api::<Deployment>::namespaced(client.clone(), &d.namespace().unwrap_or_default())
            .patch_status(&d.name_any(), &PatchParams::default(), &Patch::Merge(json!({"status": s})))
            .await
            .with_context(|| format!("update status of deployment {}", d.name_any()))?;
    }
    Ok(s)
}

fn timed_out(cond: Option<&DeploymentCondition>, deadline: i32) -> bool {
    let Some(c) = cond else { return false };
    match c.reason.as_deref() {
        Some("NewReplicaSetAvailable") => false,
        Some("ProgressDeadlineExceeded") => true,
        _ => c.last_update_time.as_ref().map(|t| t.0.as_second() + i64::from(deadline) < jiff::Timestamp::now().as_second()).unwrap_or(false),
    }
}

// ---------------------------------------------------------------- pure rollout logic

/// Resolves an int-or-percent of `total`; percentages round up or down as asked.
pub fn resolve_int_or_percent(v: &IntOrString, total: i32, round_up: bool) -> anyhow::Result<i32> {
    match v {
        IntOrString::Int(i) => Ok(*i),
        IntOrString::String(s) => {
            let p: i64 = s.strip_suffix('%').and_then(|p| p.parse().ok()).with_context(|| format!("invalid value {s:?}: not an integer or a percentage"))?;
            let scaled = p * i64::from(total);
            Ok((if round_up { (scaled + 99).div_euclid(100) } else { scaled.div_euclid(100) }) as i32)
        }
    }
}

/// (maxSurge, maxUnavailable) for `desired` replicas: surge rounds up, unavailable down, and
/// both zero would deadlock so unavailable becomes 1 (upstream ResolveFenceposts). Defaults 25%.
pub fn resolve_fenceposts(surge: Option<&IntOrString>, unavailable: Option<&IntOrString>, desired: i32) -> anyhow::Result<(i32, i32)> {
    let quarter = IntOrString::String("25%".into());
    let s = resolve_int_or_percent(surge.unwrap_or(&quarter), desired, true)?;
    let u = resolve_int_or_percent(unavailable.unwrap_or(&quarter), desired, false)?;
    Ok(if s == 0 && u == 0 { (0, 1) } else { (s, u) })
}

/// How many replicas the new ReplicaSet may have now, given all ReplicaSets' replicas
/// `current_total` (upstream NewRSNewReplicas for RollingUpdate).
pub fn new_rs_replicas(desired: i32, max_surge: i32, current_total: i32, new_replicas: i32) -> i32 {
    let max_total = desired + max_surge;
    if current_total >= max_total {
        return new_replicas;
    }
    new_replicas + (max_total - current_total).min(desired - new_replicas).max(0)
}

/// Target replicas for the old ReplicaSets (oldest first) without going below
/// `desired - max_unavailable` available pods: unhealthy replicas go first, then available ones
/// (upstream reconcileOldReplicaSets).
pub fn old_targets(desired: i32, max_unavailable: i32, new: Counts, olds: &[Counts]) -> Vec<i32> {
    let mut t: Vec<i32> = olds.iter().map(|c| c.replicas).collect();
    let old_total: i32 = t.iter().sum();
    if old_total == 0 {
        return t;
    }
    let min_available = desired - max_unavailable;
    let new_unavailable = (new.replicas - new.available).max(0);
    let max_scaled_down = new.replicas + old_total - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return t;
    }
    let mut cleaned = 0;
    for (i, c) in olds.iter().enumerate() {
        if cleaned >= max_scaled_down {
            break;
        }
        let unhealthy = (t[i] - c.available).max(0);
        if t[i] == 0 || unhealthy == 0 {
            continue;
        }
        let n = unhealthy.min(max_scaled_down - cleaned);
        t[i] -= n;
        cleaned += n;
    }
    let available: i32 = new.available + olds.iter().map(|c| c.available).sum::<i32>();
    if available <= min_available {
        return t;
    }
    let total = available - min_available;
    let mut done = 0;
    for v in t.iter_mut() {
        if done >= total {
            break;
        }
        if *v == 0 {
            continue;
        }
        let n = (*v).min(total - done);
        *v -= n;
        done += n;
    }
    t
}

/// Templates equal apart from the pod-template-hash label (upstream EqualIgnoreHash).
pub fn equal_ignoring_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    let strip = |t: &PodTemplateSpec| {
        let mut t = t.clone();
        if let Some(l) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
            // An emptied label map is pruned by `normalized`.
            l.remove(HASH_LABEL);
        }
        normalized(&t)
    };
    strip(a) == strip(b)
}

/// The template as JSON without zero values (false, 0, "", null, {} and []): writers differ in
/// whether they spell those out (protobuf bodies do, JSON patches may not), and Go's semantic
/// equality treats them as absent too.
fn normalized(t: &PodTemplateSpec) -> Value {
    fn prune(v: Value) -> Option<Value> {
        match v {
            Value::Null | Value::Bool(false) => None,
            Value::Number(n) if n.as_f64() == Some(0.0) => None,
            Value::String(s) if s.is_empty() => None,
            Value::Object(m) => {
                let m: serde_json::Map<String, Value> = m.into_iter().filter_map(|(k, v)| prune(v).map(|v| (k, v))).collect();
                (!m.is_empty()).then_some(Value::Object(m))
            }
            // Array elements keep their positions; only an empty array goes.
            Value::Array(a) if a.is_empty() => None,
            Value::Array(a) => Some(Value::Array(a.into_iter().map(|x| prune(x).unwrap_or_else(|| json!({}))).collect())),
            other => Some(other),
        }
    }
    prune(serde_json::to_value(t).unwrap_or(Value::Null)).unwrap_or(Value::Null)
}

/// A stable name suffix for a pod template: FNV-32a over the template's canonical JSON (keys
/// sorted) and the collision count, encoded with upstream's SafeEncodeString alphabet.
pub fn template_hash(t: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut text = String::new();
    canonical_json(&normalized(t), &mut text);
    let mut h: u32 = 0x811c9dc5;
    let mut feed = |b: u8| {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x01000193);
    };
    text.bytes().for_each(&mut feed);
    if let Some(c) = collision_count {
        (c as u32).to_le_bytes().into_iter().for_each(&mut feed);
    }
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string().bytes().map(|b| ALPHANUMS[b as usize % ALPHANUMS.len()] as char).collect()
}

fn canonical_json(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{}:", Value::String(k.clone()));
                canonical_json(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(x, out);
            }
            out.push(']');
        }
        other => {
            let _ = write!(out, "{other}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pct(s: &str) -> IntOrString {
        IntOrString::String(s.into())
    }

    #[test]
    fn surge_percentages_round_up_and_unavailable_round_down() {
        assert_eq!(resolve_fenceposts(Some(&pct("25%")), Some(&pct("25%")), 10).unwrap(), (3, 2));
        assert_eq!(resolve_fenceposts(None, None, 3).unwrap(), (1, 0));
        assert_eq!(resolve_fenceposts(Some(&IntOrString::Int(2)), Some(&pct("50%")), 5).unwrap(), (2, 2));
    }

    #[test]
    fn zero_surge_and_zero_unavailable_allows_one_unavailable() {
        assert_eq!(resolve_fenceposts(Some(&IntOrString::Int(0)), Some(&pct("10%")), 3).unwrap(), (0, 1));
    }

    #[test]
    fn invalid_percentage_is_an_error() {
        assert!(resolve_fenceposts(Some(&pct("lots")), None, 3).is_err());
    }

    #[test]
    fn new_replica_set_grows_only_within_max_surge() {
        // 3 desired, surge 1: a new RS next to 3 old pods may have 1.
        assert_eq!(new_rs_replicas(3, 1, 3, 0), 1);
        // Already at desired+surge: no growth.
        assert_eq!(new_rs_replicas(3, 1, 4, 1), 1);
        // Old ones gone: up to desired, never beyond.
        assert_eq!(new_rs_replicas(3, 1, 1, 1), 3);
        assert_eq!(new_rs_replicas(3, 5, 0, 0), 3);
    }

    #[test]
    fn old_replica_sets_shrink_only_as_new_pods_become_available() {
        let c = |replicas, available| Counts { replicas, available };
        // New RS has 1 pod, not yet available; maxUnavailable 0: old keeps all 3.
        assert_eq!(old_targets(3, 0, c(1, 0), &[c(3, 3)]), vec![3]);
        // New pod available: one old may go.
        assert_eq!(old_targets(3, 0, c(1, 1), &[c(3, 3)]), vec![2]);
        // maxUnavailable 1 allows one old pod down before any new one is available.
        assert_eq!(old_targets(3, 1, c(1, 0), &[c(3, 3)]), vec![2]);
    }

    #[test]
    fn unhealthy_old_replicas_are_scaled_down_first() {
        let c = |replicas, available| Counts { replicas, available };
        // Oldest RS has 2 unavailable pods: they go although nothing new is available.
        assert_eq!(old_targets(3, 0, c(1, 0), &[c(2, 0), c(3, 3)]), vec![0, 3]);
    }

    fn template(image: &str) -> PodTemplateSpec {
        serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web", "tier": "fe"}},
            "spec": {"containers": [{"name": "c", "image": image}]}
        }))
        .unwrap()
    }

    #[test]
    fn template_hash_is_stable_and_depends_on_template_and_collisions() {
        let a = template("nginx:1");
        let h = template_hash(&a, None);
        assert_eq!(h, template_hash(&a.clone(), None));
        assert_eq!(h, template_hash(&serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap(), None));
        assert_ne!(h, template_hash(&template("nginx:2"), None));
        assert_ne!(h, template_hash(&a, Some(1)));
        assert!(h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)), "{h}");
        assert!(!h.is_empty() && h.len() <= 10);
    }

    #[test]
    fn templates_compare_equal_ignoring_the_hash_label() {
        let a = template("nginx:1");
        let mut b = a.clone();
        b.metadata.as_mut().unwrap().labels.as_mut().unwrap().insert(HASH_LABEL.into(), "x".into());
        assert!(equal_ignoring_hash(&a, &b));
        assert!(!equal_ignoring_hash(&a, &template("nginx:2")));
    }

    #[test]
    fn explicit_zero_values_do_not_change_template_identity() {
        let a = template("nginx:1");
        let b: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web", "tier": "fe"}, "generation": 0},
            "spec": {"containers": [{"name": "c", "image": "nginx:1", "stdin": false, "args": []}], "hostIPC": false}
        }))
        .unwrap();
        assert!(equal_ignoring_hash(&a, &b));
        assert_eq!(template_hash(&a, None), template_hash(&b, None));
    }
}
