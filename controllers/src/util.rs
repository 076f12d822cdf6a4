//! Small helpers shared by the controllers.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference, Time};
use kube::runtime::controller::Action;
use kube::Resource;

/// Does `sel` select an object with `labels`? An empty selector selects everything, as
/// metav1.LabelSelectorAsSelector does.
pub fn selector_matches(sel: &LabelSelector, labels: Option<&BTreeMap<String, String>>) -> bool {
    let empty = BTreeMap::new();
    let labels = labels.unwrap_or(&empty);
    for (k, v) in sel.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return false;
        }
    }
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or(&[]);
        let have = labels.get(&e.key);
        let ok = match e.operator.as_str() {
            "In" => have.map(|v| values.contains(v)).unwrap_or(false),
            "NotIn" => have.map(|v| !values.contains(v)).unwrap_or(true),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// The ownerReference with controller=true, if any.
pub fn controller_ref(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references.iter().flatten().find(|r| r.controller == Some(true))
}

/// A controller ownerReference to `owner` that blocks its foreground deletion.
pub fn owner_ref<K: Resource<DynamicType = ()>>(owner: &K) -> Option<OwnerReference> {
    let m = owner.meta();
    Some(OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: m.name.clone()?,
        uid: m.uid.clone()?,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

pub fn now() -> Time {
    Time(jiff::Timestamp::now())
}

/// Ready condition True; and since when.
pub fn pod_ready_since(pod: &Pod) -> Option<Option<jiff::Timestamp>> {
    let c = pod.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")?;
    (c.status == "True").then(|| c.last_transition_time.as_ref().map(|t| t.0))
}

pub fn pod_ready(pod: &Pod) -> bool {
    pod_ready_since(pod).is_some()
}

/// Ready for at least `min_ready` seconds as of `now` (upstream podutil.IsPodAvailable).
pub fn pod_available(pod: &Pod, min_ready: i32, now: jiff::Timestamp) -> bool {
    match pod_ready_since(pod) {
        None => false,
        Some(_) if min_ready <= 0 => true,
        Some(None) => false,
        Some(Some(since)) => since.as_second() + i64::from(min_ready) <= now.as_second(),
    }
}

/// Pods that count towards a ReplicaSet: not finished and not being deleted.
pub fn pod_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("");
    phase != "Succeeded" && phase != "Failed" && pod.metadata.deletion_timestamp.is_none()
}

pub fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

pub fn is_not_found(e: &kube::Error) -> bool {
    is_status(e, 404)
}

/// Retry soon after a failure; conflicts (409) are routine with concurrent writers.
pub fn error_policy<K>(_obj: std::sync::Arc<K>, err: &crate::Error, _ctx: std::sync::Arc<impl Sized>) -> Action {
    tracing::debug!(error = %err, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(1))
}

/// Logs what a kube-runtime controller stream yields.
pub async fn drain<K: Resource, E: std::fmt::Display, S: futures::Stream<Item = Result<(kube::runtime::reflector::ObjectRef<K>, Action), E>>>(name: &str, stream: S)
where
    K::DynamicType: std::fmt::Debug,
{
    use futures::StreamExt;
    stream
        .for_each(|r| async move {
            match r {
                Ok((o, _)) => tracing::trace!(controller = name, object = %o, "reconciled"),
                Err(e) => tracing::warn!(controller = name, error = %e, "reconcile error"),
            }
        })
        .await
}

/// Takes an orphan pod by adding `owner`'s controller ref; the resourceVersion makes it a
/// compare-and-swap so two controllers cannot both adopt it. None if that failed.
pub async fn adopt_pod<K: Resource<DynamicType = ()>>(api: &kube::Api<Pod>, pod: &Pod, owner: &K) -> Option<Pod> {
    use kube::ResourceExt;
    let mut refs = pod.metadata.owner_references.clone().unwrap_or_default();
    refs.push(owner_ref(owner)?);
    let patch = serde_json::json!({"metadata": {"ownerReferences": refs, "resourceVersion": pod.metadata.resource_version}});
    match api.patch(&pod.name_any(), &kube::api::PatchParams::default(), &kube::api::Patch::Merge(patch)).await {
        Ok(p) => {
            tracing::info!(pod = %pod.name_any(), owner = %format!("{}/{}", K::kind(&()), owner.meta().name.as_deref().unwrap_or("")), "adopted pod");
            Some(p)
        }
        Err(e) => {
            tracing::debug!(pod = %pod.name_any(), error = %e, "adopting pod failed");
            None
        }
    }
}

/// Lets a pod go whose labels no longer match: drops the ownerReference with `uid`, guarded
/// by the pod's resourceVersion. Best effort (the next sync tries again).
pub async fn release_pod(api: &kube::Api<Pod>, pod: &Pod, uid: &str) {
    use kube::ResourceExt;
    let refs: Vec<_> = pod.metadata.owner_references.iter().flatten().filter(|r| r.uid != uid).cloned().collect();
    let refs = if refs.is_empty() { serde_json::Value::Null } else { serde_json::json!(refs) };
    let patch = serde_json::json!({"metadata": {"ownerReferences": refs, "resourceVersion": pod.metadata.resource_version}});
    if let Err(e) = api.patch(&pod.name_any(), &kube::api::PatchParams::default(), &kube::api::Patch::Merge(patch)).await {
        tracing::debug!(pod = %pod.name_any(), error = %e, "releasing pod failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(p: &[(&str, &str)]) -> BTreeMap<String, String> {
        p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn selector_requires_all_match_labels_and_expressions() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![LabelSelectorRequirement { key: "tier".into(), operator: "In".into(), values: Some(vec!["fe".into(), "be".into()]) }]),
        };
        assert!(selector_matches(&sel, Some(&labels(&[("app", "web"), ("tier", "fe")]))));
        assert!(!selector_matches(&sel, Some(&labels(&[("app", "web"), ("tier", "db")]))));
        assert!(!selector_matches(&sel, Some(&labels(&[("tier", "fe")]))));
        assert!(!selector_matches(&sel, None));
        assert!(selector_matches(&LabelSelector::default(), None));
    }
}
