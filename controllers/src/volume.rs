//! PersistentVolume controller (binder) and the local-path provisioner.
//!
//! Binder, as upstream's pkg/controller/volume/persistentvolume: a Pending claim is bound to the
//! smallest Available volume that satisfies it (class, access modes, size, volume mode, label
//! selector, and for WaitForFirstConsumer classes the node the scheduler picked), or to the
//! volume it names (pre-bound). Binding writes the volume's claimRef first, by compare-and-swap
//! on its resourceVersion, so two claims can never take one volume; then the claim's volumeName
//! and both statuses. A volume whose claim is gone is Released and then reclaimed by its policy
//! (Delete removes volumes this provisioner made; Retain keeps them Released).
//!
//! Provisioner: claims of a class whose provisioner is `kuberaft.io/local-path` get a
//! hostPath-backed volume on one node (required node affinity on kubernetes.io/hostname) named
//! `pvc-<claim uid>`, created with its claimRef already set. With WaitForFirstConsumer it waits
//! for the scheduler's `volume.kubernetes.io/selected-node` annotation (or a pod using the claim
//! that is already bound to a node); with Immediate it picks a Ready node itself.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{HostPathVolumeSource, Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec, Pod, VolumeNodeAffinity};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::util::{is_not_found, is_status};

const COMPONENT: &str = "persistentvolume-controller";
pub const PROVISIONER: &str = "kuberaft.io/local-path";
/// Where the node daemon creates provisioned volumes.
pub const VOLUME_ROOT: &str = "/var/lib/kuberaft/volumes";
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
const BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
const BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
const STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
const BETA_STORAGE_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";
const HOSTNAME: &str = "kubernetes.io/hostname";

struct Ctx {
    client: Client,
    pvs: Store<PersistentVolume>,
    classes: Store<StorageClass>,
    nodes: Store<Node>,
}

pub async fn run(client: Client, inf: Arc<crate::informer::Informers>) -> anyhow::Result<()> {
    let (classes, classes_task) = crate::nodelifecycle::reflect(Api::<StorageClass>::all(client.clone()), watcher::Config::default());
    let nodes = inf.nodes.store();

    let claim_ctl = Controller::new(Api::<PersistentVolumeClaim>::all(client.clone()), watcher::Config::default());
    let vol_ctl = Controller::new(Api::<PersistentVolume>::all(client.clone()), watcher::Config::default());
    let pvs = vol_ctl.store();

    // Claims hear about their volume (by claimRef) and about pods that use them (a bound pod
    // tells a WaitForFirstConsumer claim its node).
    let claim_ctl = claim_ctl
        .watches(Api::<PersistentVolume>::all(client.clone()), watcher::Config::default(), |pv: PersistentVolume| {
            pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).and_then(|r| Some(ObjectRef::new(r.name.as_deref()?).within(r.namespace.as_deref()?))).into_iter().collect::<Vec<_>>()
        })
        .watches_shared_stream(inf.pods.subscribe(), |pod: Arc<Pod>| {
            let ns = pod.namespace().unwrap_or_default();
            claim_names(&pod).into_iter().map(|c| ObjectRef::new(&c).within(&ns)).collect::<Vec<_>>()
        });
    // Volumes hear about the claim that names them, and about claims going away.
    let vol_ctl = vol_ctl.watches(Api::<PersistentVolumeClaim>::all(client.clone()), watcher::Config::default(), |pvc: PersistentVolumeClaim| {
        pvc.spec.as_ref().and_then(|s| s.volume_name.clone()).filter(|v| !v.is_empty()).map(|v| ObjectRef::new(&v)).into_iter().collect::<Vec<_>>()
    });

    let ctx = Arc::new(Ctx { client, pvs, classes, nodes });
    tokio::select! {
        _ = crate::util::drain("persistentvolumeclaim", claim_ctl.run(reconcile_claim, crate::util::error_policy, ctx.clone())) => {}
        _ = crate::util::drain("persistentvolume", vol_ctl.run(reconcile_volume, crate::util::error_policy, ctx.clone())) => {}
        _ = classes_task => {}
    }
    anyhow::bail!("volume controller watches ended")
}

/// Names of the claims a pod's volumes use.
fn claim_names(pod: &Pod) -> Vec<String> {
    pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()).filter_map(|v| v.persistent_volume_claim.as_ref().map(|c| c.claim_name.clone())).collect()
}

async fn reconcile_claim(pvc: Arc<PersistentVolumeClaim>, ctx: Arc<Ctx>) -> Result<Action, crate::Error> {
    Ok(sync_claim(&pvc, &ctx).await?)
}

async fn reconcile_volume(pv: Arc<PersistentVolume>, ctx: Arc<Ctx>) -> Result<Action, crate::Error> {
    Ok(sync_volume(&pv, &ctx).await?)
}

fn quantity_milli(q: &Quantity) -> Option<i128> {
    sched::quantity::parse_milli(&q.0)
}

fn requested(pvc: &PersistentVolumeClaim) -> i128 {
    pvc.spec.as_ref().and_then(|s| s.resources.as_ref()).and_then(|r| r.requests.as_ref()).and_then(|r| r.get("storage")).and_then(quantity_milli).unwrap_or(0)
}

fn capacity(pv: &PersistentVolume) -> i128 {
    pv.spec.as_ref().and_then(|s| s.capacity.as_ref()).and_then(|c| c.get("storage")).and_then(quantity_milli).unwrap_or(0)
}

/// The class a claim asks for: "" means "no class" (only class-less volumes).
fn claim_class(pvc: &PersistentVolumeClaim) -> String {
    pvc.spec.as_ref().and_then(|s| s.storage_class_name.clone()).unwrap_or_default()
}

fn volume_class(pv: &PersistentVolume) -> String {
    pv.spec.as_ref().and_then(|s| s.storage_class_name.clone()).unwrap_or_default()
}

fn phase_of_volume(pv: &PersistentVolume) -> &str {
    pv.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

/// Does `pv`'s required node affinity admit a node with `labels` (and name)?
pub fn node_affinity_admits(pv: &PersistentVolume, node_name: &str, labels: &BTreeMap<String, String>) -> bool {
    let Some(required) = pv.spec.as_ref().and_then(|s| s.node_affinity.as_ref()).and_then(|a| a.required.as_ref()) else { return true };
    required.node_selector_terms.iter().any(|term| {
        let exprs = term.match_expressions.iter().flatten().all(|r| requirement_admits(r, labels.get(&r.key).map(String::as_str)));
        let fields = term.match_fields.iter().flatten().all(|r| r.key == "metadata.name" && requirement_admits(r, Some(node_name)));
        exprs && fields && (term.match_expressions.as_ref().is_some_and(|e| !e.is_empty()) || term.match_fields.as_ref().is_some_and(|f| !f.is_empty()))
    })
}

fn requirement_admits(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or(&[]);
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (value.and_then(|v| v.parse::<i64>().ok()), values.first().and_then(|b| b.parse::<i64>().ok())) else { return false };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// Can `pv` serve `pvc` (ignoring whether it is free)? `node` is the node the claim must be
/// usable from, when its class delays binding until a pod is scheduled.
pub fn volume_satisfies(pv: &PersistentVolume, pvc: &PersistentVolumeClaim, node: Option<(&str, &BTreeMap<String, String>)>) -> bool {
    let (Some(vs), Some(cs)) = (pv.spec.as_ref(), pvc.spec.as_ref()) else { return false };
    if volume_class(pv) != claim_class(pvc) {
        return false;
    }
    if vs.volume_mode.as_deref().unwrap_or("Filesystem") != cs.volume_mode.as_deref().unwrap_or("Filesystem") {
        return false;
    }
    let have = vs.access_modes.as_deref().unwrap_or(&[]);
    if !cs.access_modes.iter().flatten().all(|m| have.contains(m)) {
        return false;
    }
    if capacity(pv) < requested(pvc) {
        return false;
    }
    if let Some(sel) = &cs.selector {
        if !crate::util::selector_matches(sel, pv.metadata.labels.as_ref()) {
            return false;
        }
    }
    match node {
        Some((name, labels)) => node_affinity_admits(pv, name, labels),
        None => true,
    }
}

/// The smallest free volume that serves the claim (upstream's findBestMatchForClaim).
pub fn best_match<'a>(pvs: impl IntoIterator<Item = &'a PersistentVolume>, pvc: &PersistentVolumeClaim, node: Option<(&str, &BTreeMap<String, String>)>) -> Option<&'a PersistentVolume> {
    pvs.into_iter()
        .filter(|pv| pv.metadata.deletion_timestamp.is_none() && pv.spec.as_ref().is_some_and(|s| s.claim_ref.is_none()) && matches!(phase_of_volume(pv), "Available" | "Pending" | ""))
        .filter(|pv| volume_satisfies(pv, pvc, node))
        .min_by(|a, b| capacity(a).cmp(&capacity(b)).then_with(|| a.name_any().cmp(&b.name_any())))
}

fn claim_ref_to(pvc: &PersistentVolumeClaim) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        name: pvc.metadata.name.clone(),
        namespace: pvc.metadata.namespace.clone(),
        uid: pvc.metadata.uid.clone(),
        resource_version: pvc.metadata.resource_version.clone(),
        ..Default::default()
    }
}

/// Does the volume's claimRef point at this claim (a missing uid is a pre-binding by name)?
fn refers_to(pv: &PersistentVolume, pvc: &PersistentVolumeClaim) -> bool {
    let Some(r) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else { return false };
    r.name == pvc.metadata.name && r.namespace == pvc.metadata.namespace && (r.uid.as_deref().unwrap_or("").is_empty() || r.uid == pvc.metadata.uid)
}

async fn sync_claim(pvc: &PersistentVolumeClaim, ctx: &Ctx) -> anyhow::Result<Action> {
    if pvc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = pvc.namespace().context("claim without namespace")?;
    let name = pvc.name_any();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let pv_api: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let volume_name = pvc.spec.as_ref().and_then(|s| s.volume_name.clone()).unwrap_or_default();

    if !volume_name.is_empty() {
        let pv = match pv_api.get_opt(&volume_name).await? {
            Some(pv) => pv,
            None => {
                if pvc.annotations().contains_key(BIND_COMPLETED) {
                    // It was bound and the volume vanished.
                    set_claim_phase(&api, pvc, "Lost", None).await?;
                    crate::events::record(&ctx.client, COMPONENT, pvc, "Warning", "ClaimLost", "Bound claim has lost its PersistentVolume. Data on the volume is lost!".into()).await;
                }
                return Ok(Action::await_change());
            }
        };
        if pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).is_none() {
            // Pre-bound by the user: take the volume.
            claim_volume(&pv_api, &pv, pvc).await?;
            return Ok(Action::await_change());
        }
        if !refers_to(&pv, pvc) {
            crate::events::record(&ctx.client, COMPONENT, pvc, "Warning", "FailedBinding", format!("volume \"{volume_name}\" already bound to a different claim.")).await;
            return Ok(Action::await_change());
        }
        finish_binding(&api, &pv_api, pvc, &pv).await?;
        return Ok(Action::await_change());
    }

    // A volume already claimed for us (by a provisioner or an earlier half-done binding).
    if let Some(pv) = ctx.pvs.state().into_iter().find(|pv| refers_to(pv, pvc) && pv.metadata.deletion_timestamp.is_none()) {
        let patch = json!({"metadata": {"resourceVersion": pvc.metadata.resource_version, "annotations": {BOUND_BY_CONTROLLER: "yes"}}, "spec": {"volumeName": pv.name_any()}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await.with_context(|| format!("set volumeName of {ns}/{name}"))?;
        return Ok(Action::await_change());
    }

    let class_name = claim_class(pvc);
    let class = (!class_name.is_empty()).then(|| ctx.classes.get(&ObjectRef::new(&class_name))).flatten();
    let delayed = class.as_ref().and_then(|c| c.volume_binding_mode.as_deref()) == Some("WaitForFirstConsumer");
    let node = if delayed { chosen_node(pvc, ctx).await? } else { None };
    if delayed && node.is_none() {
        crate::events::normal(&ctx.client, COMPONENT, pvc, "WaitForFirstConsumer", "waiting for first consumer to be created before binding".into()).await;
        return Ok(Action::await_change());
    }
    let node_labels = node.as_ref().map(|n| (n.name_any(), n.labels().clone()));
    let node_ref = node_labels.as_ref().map(|(n, l)| (n.as_str(), l));
    let pvs = ctx.pvs.state();
    if let Some(pv) = best_match(pvs.iter().map(|p| p.as_ref()), pvc, node_ref) {
        claim_volume(&pv_api, pv, pvc).await?;
        return Ok(Action::await_change());
    }

    match class {
        Some(c) if c.provisioner == PROVISIONER => {
            provision(ctx, pvc, &c, node.as_deref()).await?;
        }
        Some(c) => {
            if !pvc.annotations().contains_key(STORAGE_PROVISIONER) {
                let patch = json!({"metadata": {"annotations": {STORAGE_PROVISIONER: c.provisioner, BETA_STORAGE_PROVISIONER: c.provisioner}}});
                api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await?;
            }
            crate::events::normal(&ctx.client, COMPONENT, pvc, "ExternalProvisioning", format!("Waiting for a volume to be created either by the external provisioner '{}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered.", c.provisioner)).await;
        }
        None if class_name.is_empty() => {
            crate::events::normal(&ctx.client, COMPONENT, pvc, "FailedBinding", "no persistent volumes available for this claim and no storage class is set".into()).await;
        }
        None => {
            crate::events::record(&ctx.client, COMPONENT, pvc, "Warning", "ProvisioningFailed", format!("storageclass.storage.k8s.io \"{class_name}\" not found")).await;
        }
    }
    Ok(Action::await_change())
}

/// The node a delayed-binding claim is for: the scheduler's pick, else the node of a bound pod
/// that uses the claim (read live: rare, and a cache could miss a just-bound pod).
async fn chosen_node(pvc: &PersistentVolumeClaim, ctx: &Ctx) -> anyhow::Result<Option<Arc<Node>>> {
    let picked = match pvc.annotations().get(SELECTED_NODE) {
        Some(n) => Some(n.clone()),
        None => {
            let ns = pvc.namespace().unwrap_or_default();
            let name = pvc.name_any();
            let pods = Api::<Pod>::namespaced(ctx.client.clone(), &ns).list(&Default::default()).await?;
            pods.items.into_iter().filter(|p| claim_names(p).contains(&name)).find_map(|p| p.spec.and_then(|s| s.node_name).filter(|n| !n.is_empty()))
        }
    };
    let Some(name) = picked else { return Ok(None) };
    if let Some(node) = ctx.nodes.get(&ObjectRef::new(&name)) {
        return Ok(Some(node));
    }
    // A node our cache has not seen yet (just registered): read it rather than wait for a
    // change of the claim that may never come.
    Ok(Api::<Node>::all(ctx.client.clone()).get_opt(&name).await?.map(Arc::new))
}

/// Writes the claimRef into a free volume; the resourceVersion makes it a compare-and-swap.
async fn claim_volume(pv_api: &Api<PersistentVolume>, pv: &PersistentVolume, pvc: &PersistentVolumeClaim) -> anyhow::Result<()> {
    let patch = json!({"metadata": {"resourceVersion": pv.metadata.resource_version, "annotations": {BOUND_BY_CONTROLLER: "yes"}}, "spec": {"claimRef": claim_ref_to(pvc)}});
    match pv_api.patch(&pv.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await {
        Ok(_) => Ok(()),
        // Someone else took it (or it changed): the next reconcile looks again.
        Err(e) if is_status(&e, 409) => anyhow::bail!("volume {} changed while binding: {e}", pv.name_any()),
        Err(e) => Err(e.into()),
    }
}

/// Both sides point at each other: record the binding in the claim and both statuses.
async fn finish_binding(api: &Api<PersistentVolumeClaim>, pv_api: &Api<PersistentVolume>, pvc: &PersistentVolumeClaim, pv: &PersistentVolume) -> anyhow::Result<()> {
    let name = pvc.name_any();
    // A pre-binding by name gets the claim's uid.
    if pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).is_some_and(|r| r.uid.as_deref().unwrap_or("").is_empty()) {
        claim_volume(pv_api, &PersistentVolume { spec: Some(PersistentVolumeSpec { claim_ref: None, ..pv.spec.clone().unwrap_or_default() }), ..pv.clone() }, pvc).await?;
        return Ok(());
    }
    if phase_of_volume(pv) != "Bound" {
        pv_api.patch_status(&pv.name_any(), &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Bound"}}))).await?;
    }
    if !pvc.annotations().contains_key(BIND_COMPLETED) {
        let patch = json!({"metadata": {"resourceVersion": pvc.metadata.resource_version, "annotations": {BIND_COMPLETED: "yes"}}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await?;
        return Ok(());
    }
    let phase = pvc.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("");
    if phase != "Bound" {
        let vs = pv.spec.clone().unwrap_or_default();
        set_claim_phase(api, pvc, "Bound", Some(json!({"capacity": vs.capacity, "accessModes": vs.access_modes}))).await?;
        tracing::info!(claim = %format!("{}/{name}", pvc.namespace().unwrap_or_default()), volume = %pv.name_any(), "claim bound");
    }
    Ok(())
}

async fn set_claim_phase(api: &Api<PersistentVolumeClaim>, pvc: &PersistentVolumeClaim, phase: &str, extra: Option<serde_json::Value>) -> anyhow::Result<()> {
    let mut status = extra.unwrap_or_else(|| json!({}));
    status["phase"] = json!(phase);
    api.patch_status(&pvc.name_any(), &PatchParams::default(), &Patch::Merge(json!({"status": status}))).await?;
    Ok(())
}

/// A node for an Immediate claim: a Ready, schedulable node (the least recently named, for
/// a stable choice).
fn any_ready_node(ctx: &Ctx) -> Option<Arc<Node>> {
    let mut nodes: Vec<Arc<Node>> = ctx.nodes.state().into_iter().filter(|n| sched::filter::node_ready(n) && !n.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false)).collect();
    nodes.sort_by_key(|n| n.name_any());
    nodes.into_iter().next()
}

/// The volume the local-path provisioner makes for `pvc` on `node`.
pub fn local_volume(pvc: &PersistentVolumeClaim, class: &StorageClass, node: &Node) -> anyhow::Result<PersistentVolume> {
    let uid = pvc.metadata.uid.clone().context("claim without uid")?;
    let ns = pvc.namespace().context("claim without namespace")?;
    let spec = pvc.spec.clone().unwrap_or_default();
    let size = spec.resources.as_ref().and_then(|r| r.requests.as_ref()).and_then(|r| r.get("storage")).cloned().context("claim without spec.resources.requests.storage")?;
    let hostname = node.labels().get(HOSTNAME).cloned().unwrap_or_else(|| node.name_any());
    let pv_name = format!("pvc-{uid}");
    Ok(PersistentVolume {
        metadata: ObjectMeta { name: Some(pv_name.clone()), annotations: Some(BTreeMap::from([(PROVISIONED_BY.to_string(), PROVISIONER.to_string())])), ..Default::default() },
        spec: Some(PersistentVolumeSpec {
            capacity: Some(BTreeMap::from([("storage".to_string(), size)])),
            access_modes: spec.access_modes.clone(),
            volume_mode: spec.volume_mode.clone(),
            storage_class_name: class.metadata.name.clone(),
            persistent_volume_reclaim_policy: Some(class.reclaim_policy.clone().unwrap_or_else(|| "Delete".into())),
            mount_options: class.mount_options.clone(),
            claim_ref: Some(claim_ref_to(pvc)),
            host_path: Some(HostPathVolumeSource { path: format!("{VOLUME_ROOT}/{pv_name}_{ns}_{}", pvc.name_any()), type_: Some("DirectoryOrCreate".into()) }),
            node_affinity: Some(VolumeNodeAffinity {
                required: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm { match_expressions: Some(vec![NodeSelectorRequirement { key: HOSTNAME.into(), operator: "In".into(), values: Some(vec![hostname]) }]), match_fields: None }],
                }),
            }),
            ..Default::default()
        }),
        status: None,
    })
}

async fn provision(ctx: &Ctx, pvc: &PersistentVolumeClaim, class: &StorageClass, node: Option<&Node>) -> anyhow::Result<()> {
    let chosen;
    let node = match node {
        Some(n) => n,
        None => {
            chosen = any_ready_node(ctx);
            match chosen.as_deref() {
                Some(n) => n,
                None => {
                    crate::events::record(&ctx.client, COMPONENT, pvc, "Warning", "ProvisioningFailed", "no Ready node to provision a local volume on".into()).await;
                    return Ok(());
                }
            }
        }
    };
    let pv = match local_volume(pvc, class, node) {
        Ok(pv) => pv,
        Err(e) => {
            crate::events::record(&ctx.client, PROVISIONER, pvc, "Warning", "ProvisioningFailed", format!("failed to provision volume with StorageClass \"{}\": {e:#}", class.name_any())).await;
            return Ok(());
        }
    };
    let ns = pvc.namespace().unwrap_or_default();
    crate::events::normal(&ctx.client, PROVISIONER, pvc, "Provisioning", format!("External provisioner is provisioning volume for claim \"{ns}/{}\"", pvc.name_any())).await;
    match Api::<PersistentVolume>::all(ctx.client.clone()).create(&PostParams::default(), &pv).await {
        Ok(_) => {
            crate::events::normal(&ctx.client, PROVISIONER, pvc, "ProvisioningSucceeded", format!("Successfully provisioned volume {}", pv.name_any())).await;
            Ok(())
        }
        Err(e) if is_status(&e, 409) => Ok(()),
        Err(e) => Err(e).context("create provisioned volume"),
    }
}

async fn sync_volume(pv: &PersistentVolume, ctx: &Ctx) -> anyhow::Result<Action> {
    if pv.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let name = pv.name_any();
    let Some(r) = pv.spec.as_ref().and_then(|s| s.claim_ref.clone()) else {
        if phase_of_volume(pv) != "Available" {
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Available"}}))).await?;
        }
        return Ok(Action::await_change());
    };
    let (Some(cns), Some(cname)) = (r.namespace.clone(), r.name.clone()) else { return Ok(Action::await_change()) };
    // Read the claim live: a cache that has not seen a new claim yet must not release its volume.
    let claim = match Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &cns).get_opt(&cname).await? {
        Some(c) if r.uid.as_deref().unwrap_or("").is_empty() || c.metadata.uid == r.uid => Some(c),
        _ => None,
    };
    if claim.is_some() {
        // Binding proceeds from the claim's side.
        return Ok(Action::await_change());
    }
    if r.uid.as_deref().unwrap_or("").is_empty() {
        // Pre-bound to a claim that does not exist yet: wait for it.
        return Ok(Action::await_change());
    }
    // The claim is gone: release, then reclaim.
    if phase_of_volume(pv) != "Released" && phase_of_volume(pv) != "Failed" {
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Released"}}))).await?;
        return Ok(Action::await_change());
    }
    let policy = pv.spec.as_ref().and_then(|s| s.persistent_volume_reclaim_policy.as_deref()).unwrap_or("Retain");
    match policy {
        "Delete" if pv.annotations().get(PROVISIONED_BY).map(String::as_str) == Some(PROVISIONER) => {
            let dp = kube::api::DeleteParams { preconditions: Some(kube::api::Preconditions { uid: pv.metadata.uid.clone(), resource_version: pv.metadata.resource_version.clone() }), ..Default::default() };
            match api.delete(&name, &dp).await {
                Ok(_) => tracing::info!(volume = %name, "released volume deleted"),
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        "Delete" | "Recycle" if phase_of_volume(pv) != "Failed" => {
            let msg = format!("error getting deleter volume plugin for volume \"{name}\": no deletable volume plugin matched");
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Failed", "message": msg}}))).await?;
            crate::events::record(&ctx.client, COMPONENT, pv, "Warning", "VolumeFailedDelete", msg).await;
        }
        _ => {}
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pv(name: &str, class: &str, size: &str, modes: &[&str], host: Option<&str>) -> PersistentVolume {
        let mut v = json!({"metadata": {"name": name}, "spec": {"storageClassName": class, "capacity": {"storage": size}, "accessModes": modes}, "status": {"phase": "Available"}});
        if let Some(h) = host {
            v["spec"]["nodeAffinity"] = json!({"required": {"nodeSelectorTerms": [{"matchExpressions": [{"key": HOSTNAME, "operator": "In", "values": [h]}]}]}});
        }
        serde_json::from_value(v).unwrap()
    }

    fn pvc(class: Option<&str>, size: &str, modes: &[&str]) -> PersistentVolumeClaim {
        let mut v = json!({"metadata": {"name": "data", "namespace": "default", "uid": "u1"}, "spec": {"accessModes": modes, "resources": {"requests": {"storage": size}}}});
        if let Some(c) = class {
            v["spec"]["storageClassName"] = json!(c);
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_smallest_volume_that_fits_the_class_modes_and_size_wins() {
        let vols = [pv("big", "fast", "10Gi", &["ReadWriteOnce"], None), pv("small", "fast", "2Gi", &["ReadWriteOnce", "ReadOnlyMany"], None), pv("tiny", "fast", "500Mi", &["ReadWriteOnce"], None), pv("slow", "slow", "2Gi", &["ReadWriteOnce"], None)];
        assert_eq!(best_match(&vols, &pvc(Some("fast"), "1Gi", &["ReadWriteOnce"]), None).map(|p| p.name_any()), Some("small".into()));
        assert_eq!(best_match(&vols, &pvc(Some("fast"), "1Gi", &["ReadWriteMany"]), None).map(|p| p.name_any()), None);
        assert_eq!(best_match(&vols, &pvc(Some("fast"), "20Gi", &["ReadWriteOnce"]), None).map(|p| p.name_any()), None);
        // No class asks for class-less volumes only.
        assert_eq!(best_match(&vols, &pvc(None, "1Gi", &["ReadWriteOnce"]), None).map(|p| p.name_any()), None);
    }

    #[test]
    fn claimed_volumes_are_not_free() {
        let mut taken = pv("a", "", "1Gi", &["ReadWriteOnce"], None);
        taken.spec.as_mut().unwrap().claim_ref = Some(ObjectReference { name: Some("other".into()), namespace: Some("default".into()), ..Default::default() });
        assert!(best_match([&taken], &pvc(Some(""), "1Gi", &["ReadWriteOnce"]), None).is_none());
    }

    #[test]
    fn delayed_binding_needs_a_volume_reachable_from_the_chosen_node() {
        let vols = [pv("on-a", "local", "1Gi", &["ReadWriteOnce"], Some("a")), pv("on-b", "local", "1Gi", &["ReadWriteOnce"], Some("b"))];
        let labels_b = BTreeMap::from([(HOSTNAME.to_string(), "b".to_string())]);
        assert_eq!(best_match(&vols, &pvc(Some("local"), "1Gi", &["ReadWriteOnce"]), Some(("b", &labels_b))).map(|p| p.name_any()), Some("on-b".into()));
        let labels_c = BTreeMap::from([(HOSTNAME.to_string(), "c".to_string())]);
        assert!(best_match(&vols, &pvc(Some("local"), "1Gi", &["ReadWriteOnce"]), Some(("c", &labels_c))).is_none());
    }

    #[test]
    fn a_provisioned_volume_lives_on_the_node_and_is_claimed_for_the_claim() {
        let class: StorageClass = serde_json::from_value(json!({"metadata": {"name": "local-path"}, "provisioner": PROVISIONER, "reclaimPolicy": "Delete"})).unwrap();
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1", "labels": {HOSTNAME: "n1"}}})).unwrap();
        let v = local_volume(&pvc(Some("local-path"), "1Gi", &["ReadWriteOnce"]), &class, &node).unwrap();
        assert_eq!(v.name_any(), "pvc-u1");
        let s = v.spec.as_ref().unwrap();
        assert_eq!(s.claim_ref.as_ref().and_then(|r| r.uid.as_deref()), Some("u1"));
        assert_eq!(s.host_path.as_ref().map(|h| h.path.as_str()), Some("/var/lib/kuberaft/volumes/pvc-u1_default_data"));
        assert!(node_affinity_admits(&v, "n1", node.labels()));
        assert!(!node_affinity_admits(&v, "n2", &BTreeMap::from([(HOSTNAME.to_string(), "n2".to_string())])));
        assert_eq!(s.persistent_volume_reclaim_policy.as_deref(), Some("Delete"));
        let no_size: PersistentVolumeClaim = serde_json::from_value(json!({"metadata": {"name": "x", "namespace": "d", "uid": "u"}, "spec": {}})).unwrap();
        assert!(local_volume(&no_size, &class, &node).is_err());
    }
}
