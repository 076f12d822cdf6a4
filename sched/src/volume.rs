//! Volume binding as upstream's VolumeBinding plugin does it, for PersistentVolumeClaims:
//! PreFilter (claims exist, are not being deleted, and are bound unless their StorageClass
//! delays binding), Filter (a bound volume's node affinity), and the claims to provision on the
//! chosen node (WaitForFirstConsumer: the selected-node annotation, then wait for the binding).

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;

use crate::filter::{node_selector_matches, Failure};

pub const NODE_CONFLICT: &str = "node(s) had volume node affinity conflict";
pub const UNBOUND_IMMEDIATE: &str = "pod has unbound immediate PersistentVolumeClaims";
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";

/// The claims, volumes and classes the scheduler watches.
#[derive(Default)]
pub struct Volumes {
    pub claims: HashMap<String, Arc<PersistentVolumeClaim>>,
    pub volumes: HashMap<String, Arc<PersistentVolume>>,
    pub classes: HashMap<String, Arc<StorageClass>>,
}

/// What PreFilter found for one pod.
#[derive(Default, Debug)]
pub struct Claims {
    /// Volumes the pod's bound claims use.
    bound: Vec<Arc<PersistentVolume>>,
    /// Unbound claims of WaitForFirstConsumer classes: provisioned for the chosen node.
    pub delayed: Vec<Arc<PersistentVolumeClaim>>,
}

/// The pod's claim names: persistentVolumeClaim volumes and generic ephemeral volumes
/// (claim "<pod>-<volume>"), the latter flagged.
fn claim_names(pod: &Pod) -> Vec<(String, bool)> {
    let name = pod.metadata.name.as_deref().unwrap_or("");
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|v| {
            if let Some(c) = &v.persistent_volume_claim {
                Some((c.claim_name.clone(), false))
            } else {
                v.ephemeral.as_ref().map(|_| (format!("{name}-{}", v.name), true))
            }
        })
        .collect()
}

pub fn uses_claims(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.volumes.as_ref()).is_some_and(|vs| vs.iter().any(|v| v.persistent_volume_claim.is_some() || v.ephemeral.is_some()))
}

fn class_name(pvc: &PersistentVolumeClaim) -> Option<&str> {
    pvc.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("volume.beta.kubernetes.io/storage-class"))
        .map(String::as_str)
        .or(pvc.spec.as_ref().and_then(|s| s.storage_class_name.as_deref()))
        .filter(|c| !c.is_empty())
}

fn volume_name(pvc: &PersistentVolumeClaim) -> Option<&str> {
    pvc.spec.as_ref().and_then(|s| s.volume_name.as_deref()).filter(|v| !v.is_empty())
}

pub fn is_bound(pvc: &PersistentVolumeClaim) -> bool {
    volume_name(pvc).is_some()
}

/// PreFilter: Err is the message for the whole pod (upstream's UnschedulableAndUnresolvable).
pub fn prefilter(v: &Volumes, pod: &Pod) -> Result<Claims, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("");
    let mut out = Claims::default();
    for (name, ephemeral) in claim_names(pod) {
        let Some(pvc) = v.claims.get(&format!("{ns}/{name}")) else {
            return Err(if ephemeral { format!("waiting for ephemeral volume controller to create the persistentvolumeclaim \"{name}\"") } else { format!("persistentvolumeclaim \"{name}\" not found") });
        };
        if pvc.metadata.deletion_timestamp.is_some() {
            return Err(format!("persistentvolumeclaim \"{name}\" is being deleted"));
        }
        if let Some(pv) = volume_name(pvc) {
            if let Some(pv) = v.volumes.get(pv) {
                out.bound.push(pv.clone());
            }
            continue;
        }
        let delayed = class_name(pvc).and_then(|c| v.classes.get(c)).is_some_and(|c| c.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer"));
        if !delayed {
            return Err(UNBOUND_IMMEDIATE.to_string());
        }
        out.delayed.push(pvc.clone());
    }
    Ok(out)
}

impl Claims {
    /// Filter: every bound volume's node affinity matches the node.
    pub fn filter(&self, node: &Node) -> Result<(), Failure> {
        for pv in &self.bound {
            let required = pv.spec.as_ref().and_then(|s| s.node_affinity.as_ref()).and_then(|a| a.required.as_ref());
            if required.is_some_and(|sel| !node_selector_matches(sel, node)) {
                return Err(Failure { reasons: vec![NODE_CONFLICT.into()], unresolvable: true });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vols() -> Volumes {
        let mut v = Volumes::default();
        let claim = |name: &str, spec: serde_json::Value| -> (String, Arc<PersistentVolumeClaim>) {
            (format!("d/{name}"), Arc::new(serde_json::from_value(json!({"metadata": {"name": name, "namespace": "d"}, "spec": spec})).expect("pvc")))
        };
        v.claims.extend([
            claim("bound", json!({"volumeName": "pv1"})),
            claim("imm", json!({"storageClassName": "fast"})),
            claim("none", json!({})),
            claim("wait", json!({"storageClassName": "local"})),
        ]);
        v.volumes.insert(
            "pv1".into(),
            Arc::new(
                serde_json::from_value(json!({"metadata": {"name": "pv1"}, "spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["a"]}]}]}}}}))
                .expect("pv"),
            ),
        );
        v.classes.insert("fast".into(), Arc::new(serde_json::from_value(json!({"metadata": {"name": "fast"}, "provisioner": "x", "volumeBindingMode": "Immediate"})).expect("sc")));
        v.classes.insert("local".into(), Arc::new(serde_json::from_value(json!({"metadata": {"name": "local"}, "provisioner": "x", "volumeBindingMode": "WaitForFirstConsumer"})).expect("sc")));
        v
    }

    fn pod(volumes: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {"containers": [], "volumes": volumes}})).expect("pod")
    }

    fn claim(name: &str) -> serde_json::Value {
        json!({"name": name, "persistentVolumeClaim": {"claimName": name}})
    }

    fn node(name: &str) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}})).expect("node")
    }

    #[test]
    fn missing_and_unbound_immediate_claims_make_the_pod_unschedulable() {
        let v = vols();
        assert_eq!(prefilter(&v, &pod(json!([claim("nope")]))).err().as_deref(), Some("persistentvolumeclaim \"nope\" not found"));
        assert_eq!(prefilter(&v, &pod(json!([claim("imm")]))).err().as_deref(), Some(UNBOUND_IMMEDIATE));
        assert_eq!(prefilter(&v, &pod(json!([claim("none")]))).err().as_deref(), Some(UNBOUND_IMMEDIATE));
        let eph = json!([{"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}}]);
        assert_eq!(prefilter(&v, &pod(eph)).err().as_deref(), Some("waiting for ephemeral volume controller to create the persistentvolumeclaim \"p-scratch\""));
    }

    #[test]
    fn bound_volumes_pin_the_node_and_delayed_claims_wait_for_one() {
        let v = vols();
        let c = prefilter(&v, &pod(json!([claim("bound"), claim("wait")]))).expect("claims");
        assert_eq!(c.delayed.len(), 1);
        assert!(c.filter(&node("a")).is_ok());
        assert_eq!(c.filter(&node("b")).err().map(|f| f.reasons), Some(vec![NODE_CONFLICT.to_string()]));
        let none = prefilter(&v, &pod(json!([]))).expect("none");
        assert!(none.bound.is_empty() && none.delayed.is_empty());
    }
}
