//! ControllerRevisions for DaemonSets and StatefulSets: one per distinct pod template, owned by
//! the workload, carrying the template as a strategic merge patch that replaces
//! `spec.template` (what `kubectl rollout history --revision` shows and `kubectl rollout undo`
//! applies to the workload), a revision number, and the `controller-revision-hash` label.

use std::collections::BTreeMap;

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::{json, Value};

use crate::deployment::{equal_ignoring_hash, template_hash};
use crate::util::{controller_ref, owner_ref, selector_matches};

pub const HASH_LABEL: &str = "controller-revision-hash";

/// The revision data for `template`: `{"spec":{"template":{...,"$patch":"replace"}}}`, as
/// upstream's getPatch builds it, so kubectl can apply it to the workload.
pub fn template_patch(template: &PodTemplateSpec) -> Value {
    let mut t = serde_json::to_value(template).unwrap_or_else(|_| json!({}));
    if let Value::Object(m) = &mut t {
        m.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": t}})
}

/// The pod template a revision records, if its data is a template patch.
pub fn revision_template(cr: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut t = cr.data.as_ref()?.0.get("spec")?.get("template")?.clone();
    if let Value::Object(m) = &mut t {
        m.remove("$patch");
    }
    serde_json::from_value(t).ok()
}

/// Does the revision record `template`? Compared semantically (zero values and key order do not
/// matter), so revisions written by other clients match too.
pub fn matches(cr: &ControllerRevision, template: &PodTemplateSpec) -> bool {
    revision_template(cr).is_some_and(|t| equal_ignoring_hash(&t, template))
}

/// The revisions of a workload after [`sync`]: the one for the current template and the rest
/// (ascending revision).
pub struct Revisions {
    pub current: ControllerRevision,
    pub others: Vec<ControllerRevision>,
}

/// What [`sync`] needs to know about the workload.
pub struct Parent<'a, K> {
    pub obj: &'a K,
    pub selector: &'a LabelSelector,
    pub template: &'a PodTemplateSpec,
    pub collision_count: Option<i32>,
}

/// Lists the workload's revisions, finds or creates the one for its current template (deleting
/// duplicates, renumbering it as the newest when an older template comes back, as a rollback
/// does), and returns them all. On a name collision with a foreign revision it bumps
/// `status.collisionCount` through `bump_collisions` and fails, so the next attempt hashes anew.
pub async fn sync<K, F, Fut>(client: &Client, p: Parent<'_, K>, bump_collisions: F) -> anyhow::Result<Revisions>
where
    K: Resource<DynamicType = ()>,
    F: FnOnce(i32) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let ns = p.obj.meta().namespace.clone().context("workload without namespace")?;
    let uid = p.obj.meta().uid.clone().context("workload without uid")?;
    let name = p.obj.meta().name.clone().context("workload without name")?;
    let api = Api::<ControllerRevision>::namespaced(client.clone(), &ns);
    let list = api.list(&ListParams::default()).await.with_context(|| format!("list controllerrevisions in {ns}"))?;
    let mut mine: Vec<ControllerRevision> = list.items.into_iter().filter(|cr| controller_ref(&cr.metadata).is_some_and(|c| c.uid == uid) && selector_matches(p.selector, cr.metadata.labels.as_ref())).collect();
    mine.sort_by_key(|cr| cr.revision);
    let (mut current, others): (Vec<_>, Vec<_>) = mine.into_iter().partition(|cr| matches(cr, p.template));
    let next = others.iter().map(|cr| cr.revision).max().unwrap_or(0) + 1;
    let cur = match current.pop() {
        Some(keep) => {
            // Duplicates of the current template (at most one survives, the newest).
            for dup in current {
                match api.delete(&dup.name_any(), &DeleteParams::background()).await {
                    Ok(_) => {}
                    Err(e) if crate::util::is_not_found(&e) => {}
                    Err(e) => return Err(e).with_context(|| format!("delete duplicate controllerrevision {}", dup.name_any())),
                }
            }
            if keep.revision < next {
                api.patch(&keep.name_any(), &PatchParams::default(), &Patch::Merge(json!({"revision": next, "metadata": {"resourceVersion": keep.metadata.resource_version}})))
                    .await
                    .with_context(|| format!("renumber controllerrevision {}", keep.name_any()))?
            } else {
                keep
            }
        }
        None => {
            let hash = template_hash(p.template, p.collision_count);
            let cr_name = revision_name(&name, &hash);
            let mut labels: BTreeMap<String, String> = p.template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
            labels.insert(HASH_LABEL.into(), hash);
            let annotations = p.obj.meta().annotations.clone().filter(|a| !a.is_empty());
            let cr = ControllerRevision {
                metadata: ObjectMeta {
                    name: Some(cr_name.clone()),
                    namespace: Some(ns.clone()),
                    labels: Some(labels),
                    annotations,
                    owner_references: Some(vec![owner_ref(p.obj).context("workload without name or uid")?]),
                    ..Default::default()
                },
                data: Some(RawExtension(template_patch(p.template))),
                revision: next,
            };
            match api.create(&PostParams::default(), &cr).await {
                Ok(c) => c,
                Err(e) if crate::util::is_status(&e, 409) => {
                    let existing = api.get(&cr_name).await.with_context(|| format!("get controllerrevision {cr_name}"))?;
                    let ours = controller_ref(&existing.metadata).is_some_and(|c| c.uid == uid);
                    if ours && matches(&existing, p.template) {
                        existing
                    } else {
                        let n = p.collision_count.unwrap_or(0) + 1;
                        bump_collisions(n).await?;
                        anyhow::bail!("controllerrevision name {cr_name} collides; collisionCount now {n}");
                    }
                }
                Err(e) => return Err(e).with_context(|| format!("create controllerrevision {cr_name}")),
            }
        }
    };
    Ok(Revisions { current: cur, others })
}

/// `<parent>-<hash>`, the parent's name cut so the whole stays a valid name (upstream
/// ControllerRevisionName).
pub fn revision_name(parent: &str, hash: &str) -> String {
    let prefix: String = parent.chars().take(223).collect();
    format!("{prefix}-{hash}")
}

/// The revisions beyond `limit` to delete: oldest first, never one that `in_use` keeps.
pub fn to_prune(others: &[ControllerRevision], limit: i32, in_use: impl Fn(&ControllerRevision) -> bool) -> Vec<&ControllerRevision> {
    let mut candidates: Vec<&ControllerRevision> = others.iter().collect();
    candidates.sort_by_key(|cr| cr.revision);
    let mut excess = candidates.len() as i64 - i64::from(limit.max(0));
    let mut out = Vec::new();
    for cr in candidates {
        if excess <= 0 {
            break;
        }
        if in_use(cr) {
            continue;
        }
        out.push(cr);
        excess -= 1;
    }
    out
}

pub async fn prune(client: &Client, ns: &str, victims: &[&ControllerRevision]) {
    let api = Api::<ControllerRevision>::namespaced(client.clone(), ns);
    for cr in victims {
        match api.delete(&cr.name_any(), &DeleteParams::background()).await {
            Ok(_) => tracing::info!(revision = %cr.name_any(), "deleted old controller revision"),
            Err(e) if crate::util::is_not_found(&e) => {}
            Err(e) => tracing::warn!(revision = %cr.name_any(), error = %e, "deleting old controller revision failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(image: &str) -> PodTemplateSpec {
        serde_json::from_value(json!({"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": image}]}})).unwrap()
    }

    fn cr(name: &str, revision: i64, t: &PodTemplateSpec) -> ControllerRevision {
        ControllerRevision { metadata: ObjectMeta { name: Some(name.into()), ..Default::default() }, data: Some(RawExtension(template_patch(t))), revision }
    }

    #[test]
    fn patch_replaces_the_template_and_round_trips() {
        let t = template("nginx:1");
        let p = template_patch(&t);
        assert_eq!(p["spec"]["template"]["$patch"], json!("replace"));
        assert_eq!(p["spec"]["template"]["spec"]["containers"][0]["image"], json!("nginx:1"));
        let c = cr("x-1", 1, &t);
        assert_eq!(revision_template(&c).unwrap(), t);
        assert!(matches(&c, &t));
        assert!(!matches(&c, &template("nginx:2")));
        assert!(revision_template(&ControllerRevision { data: Some(RawExtension(json!({"spec": 3}))), ..Default::default() }).is_none());
    }

    #[test]
    fn pruning_keeps_the_newest_and_those_in_use() {
        let t = template("a");
        let others: Vec<_> = (1..=5).map(|i| cr(&format!("r{i}"), i, &t)).collect();
        let names = |v: Vec<&ControllerRevision>| v.iter().map(|c| c.name_any()).collect::<Vec<_>>();
        assert_eq!(names(to_prune(&others, 2, |_| false)), ["r1", "r2", "r3"]);
        assert_eq!(names(to_prune(&others, 2, |c| c.revision == 2)), ["r1", "r3", "r4"]);
        assert!(to_prune(&others, 10, |_| false).is_empty());
        assert_eq!(to_prune(&others, -1, |_| false).len(), 5);
    }

    #[test]
    fn long_names_are_cut() {
        assert_eq!(revision_name("web", "abc"), "web-abc");
        assert_eq!(revision_name(&"x".repeat(300), "h").len(), 225);
    }
}
