//! Pod garbage collector (upstream pkg/controller/podgc). Every period it force-deletes (grace 0):
//! - terminated pods (Succeeded/Failed) beyond --terminated-pod-gc-threshold, oldest first;
//! - pods bound to a node that no longer exists, once the node has been missing from the cache
//!   for a quarantine and the API confirms it is gone: marked Failed with the DisruptionTarget
//!   condition (reason DeletionByPodGC) first;
//! - terminating pods that were never scheduled (no node will ever confirm their deletion);
//! - terminating pods on a not-ready node tainted node.kubernetes.io/out-of-service.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::{Node, Pod, PodCondition};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::NodeSettings;

const OUT_OF_SERVICE: &str = "node.kubernetes.io/out-of-service";

pub async fn run(client: Client, settings: Arc<NodeSettings>, inf: Arc<crate::informer::Informers>) -> anyhow::Result<()> {
    inf.nodes.wait_ready().await?;
    inf.pods.wait_ready().await?;
    gc_loop(client, settings, inf.nodes.store(), inf.pods.store()).await
}

async fn gc_loop(client: Client, settings: Arc<NodeSettings>, nodes: Store<Node>, pods: Store<Pod>) -> anyhow::Result<()> {
    // Node name → when we first saw pods bound to it while it was missing.
    let mut missing: HashMap<String, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(settings.pod_gc_period.max(std::time::Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let all = pods.state();
        for p in terminated_to_collect(&all, settings.terminated_pod_gc_threshold) {
            tracing::info!(pod = %key(p), "collecting terminated pod over the threshold");
            force_delete(&client, p).await;
        }
        for p in all.iter().filter(|p| p.metadata.deletion_timestamp.is_some() && node_of(p).is_none()) {
            tracing::info!(pod = %key(p), "deleting unscheduled terminating pod");
            force_delete(&client, p).await;
        }
        for p in all.iter().filter(|p| p.metadata.deletion_timestamp.is_some()) {
            let Some(node) = node_of(p).and_then(|n| nodes.get(&ObjectRef::new(n))) else { continue };
            let out_of_service = crate::nodelifecycle::taints(&node).iter().any(|t| t.key == OUT_OF_SERVICE && t.effect == "NoExecute");
            if out_of_service && crate::nodelifecycle::ready_status(&node) != "True" {
                tracing::info!(pod = %key(p), "deleting terminating pod on an out-of-service node");
                force_delete(&client, p).await;
            }
        }
        // Orphans.
        let now = Instant::now();
        let bound_to_missing: HashSet<&str> = all.iter().filter_map(|p| node_of(p)).filter(|n| nodes.get(&ObjectRef::new(n)).is_none()).collect();
        missing.retain(|n, _| bound_to_missing.contains(n.as_str()));
        for n in &bound_to_missing {
            missing.entry(n.to_string()).or_insert(now);
        }
        let due: Vec<String> = missing.iter().filter(|(_, since)| now.duration_since(**since) >= settings.pod_gc_orphan_quarantine).map(|(n, _)| n.clone()).collect();
        for n in due {
            // The cache may lag: ask the API.
            match Api::<Node>::all(client.clone()).get_opt(&n).await {
                Ok(None) => {}
                Ok(Some(_)) => {
                    missing.remove(&n);
                    continue;
                }
                Err(e) => {
                    tracing::debug!(node = %n, error = %e, "checking node failed");
                    continue;
                }
            }
            for p in all.iter().filter(|p| node_of(p) == Some(n.as_str())) {
                tracing::info!(pod = %key(p), node = %n, "found orphaned pod assigned to a deleted node; deleting");
                mark_failed(&client, p).await;
                force_delete(&client, p).await;
            }
        }
    }
}

fn key(p: &Pod) -> String {
    format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any())
}

fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).filter(|n| !n.is_empty())
}

fn terminated(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

/// The terminated pods over `threshold`, oldest first (upstream gcTerminated).
pub fn terminated_to_collect(pods: &[Arc<Pod>], threshold: i64) -> Vec<&Pod> {
    if threshold <= 0 {
        return vec![];
    }
    let mut t: Vec<&Pod> = pods.iter().map(|p| p.as_ref()).filter(|p| terminated(p)).collect();
    let excess = t.len().saturating_sub(threshold as usize);
    if excess == 0 {
        return vec![];
    }
    t.sort_by(|a, b| a.metadata.creation_timestamp.as_ref().map(|c| c.0).cmp(&b.metadata.creation_timestamp.as_ref().map(|c| c.0)).then_with(|| a.name_any().cmp(&b.name_any())));
    t.truncate(excess);
    t
}

async fn mark_failed(client: &Client, pod: &Pod) {
    let cond = PodCondition {
        type_: "DisruptionTarget".into(),
        status: "True".into(),
        reason: Some("DeletionByPodGC".into()),
        message: Some("PodGC: node no longer exists".into()),
        last_transition_time: Some(crate::util::now()),
        ..Default::default()
    };
    let mut status = json!({"conditions": [cond]});
    if !terminated(pod) {
        status["phase"] = json!("Failed");
    }
    let patch = json!({"metadata": {"uid": pod.metadata.uid}, "status": status});
    let api = Api::<Pod>::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    if let Err(e) = api.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Strategic(patch)).await {
        tracing::debug!(pod = %key(pod), error = %e, "marking orphaned pod failed did not work");
    }
}

async fn force_delete(client: &Client, pod: &Pod) {
    let api = Api::<Pod>::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let dp = DeleteParams { grace_period_seconds: Some(0), preconditions: Some(Preconditions { uid: pod.metadata.uid.clone(), resource_version: None }), ..Default::default() };
    match api.delete(&pod.name_any(), &dp).await {
        Ok(_) => {}
        Err(e) if crate::util::is_not_found(&e) || crate::util::is_status(&e, 409) => {}
        Err(e) => tracing::warn!(pod = %key(pod), error = %e, "pod GC could not delete pod"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn pod(name: &str, phase: &str, created: i64) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: kube::api::ObjectMeta { name: Some(name.into()), creation_timestamp: Some(Time(jiff::Timestamp::from_second(created).unwrap())), ..Default::default() },
            status: Some(PodStatus { phase: Some(phase.into()), ..Default::default() }),
            ..Default::default()
        })
    }

    #[test]
    fn oldest_terminated_pods_over_the_threshold() {
        let pods = vec![pod("a", "Succeeded", 30), pod("b", "Running", 1), pod("c", "Failed", 10), pod("d", "Succeeded", 20)];
        let names = |v: Vec<&Pod>| v.iter().map(|p| p.name_any()).collect::<Vec<_>>();
        assert_eq!(names(terminated_to_collect(&pods, 1)), ["c", "d"]);
        assert_eq!(names(terminated_to_collect(&pods, 3)), Vec::<String>::new());
        assert_eq!(names(terminated_to_collect(&pods, 0)), Vec::<String>::new(), "0 disables");
    }
}
