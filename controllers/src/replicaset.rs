//! ReplicaSet controller: keeps `spec.replicas` active pods that match the selector and are
//! controlled by the ReplicaSet, and reports their state in `status`.
//!
//! Pods are listed live from the API on each reconcile rather than from a cache, so a pod this
//! controller just created is never missed (what upstream's "expectations" work around).

use std::cmp::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::future::join_all;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::util::{controller_ref, owner_ref, pod_active, pod_available, pod_ready, pod_ready_since, selector_matches};

const COMPONENT: &str = "replicaset-controller";
/// Upstream creates at most this many pods per sync (its burst size).
const MAX_BATCH: usize = 500;

struct Ctx {
    client: Client,
}

pub async fn run(client: Client, inf: Arc<crate::informer::Informers>) -> anyhow::Result<()> {
    let rs_api = Api::<ReplicaSet>::all(client.clone());
    let ctl = Controller::new(rs_api, watcher::Config::default());
    let store = ctl.store();
    // One pod watch serves both owned pods (by controller ref) and orphans (by selector).
    let ctl = ctl.watches_shared_stream(inf.pods.subscribe(), move |pod: Arc<Pod>| {
        let ns = pod.namespace();
        if let Some(c) = controller_ref(&pod.metadata) {
            return if c.kind == "ReplicaSet" && c.api_version.starts_with("apps/") { vec![ObjectRef::new(&c.name).within(ns.as_deref().unwrap_or(""))] } else { vec![] };
        }
        store
            .state()
            .iter()
            .filter(|rs| rs.namespace() == ns && rs.spec.as_ref().map(|s| selector_matches(&s.selector, pod.metadata.labels.as_ref())).unwrap_or(false))
            .map(|rs| ObjectRef::from_obj(rs.as_ref()))
            .collect::<Vec<_>>()
    });
    crate::util::drain("replicaset", ctl.run(reconcile, crate::util::error_policy, Arc::new(Ctx { client }))).await;
    Ok(())
}

async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Ctx>) -> Result<Action, crate::Error> {
    Ok(sync(&rs, &ctx.client).await?)
}

async fn sync(rs: &ReplicaSet, client: &Client) -> anyhow::Result<Action> {
    let name = rs.name_any();
    let ns = rs.namespace().context("ReplicaSet without namespace")?;
    let uid = rs.metadata.uid.clone().context("ReplicaSet without uid")?;
    let spec = rs.spec.as_ref().context("ReplicaSet without spec")?;
    let want = spec.replicas.unwrap_or(1).max(0) as usize;
    let deleting = rs.metadata.deletion_timestamp.is_some();
    let pods_api = Api::<Pod>::namespaced(client.clone(), &ns);

    let all = pods_api.list(&ListParams::default()).await.with_context(|| format!("list pods in {ns}"))?;
    let mut mine: Vec<Pod> = Vec::new();
    for pod in all.items {
        let matches = selector_matches(&spec.selector, pod.metadata.labels.as_ref());
        match controller_ref(&pod.metadata) {
            Some(c) if c.uid == uid => {
                if matches {
                    mine.push(pod);
                } else if !deleting {
                    // Its labels changed: let it go, as upstream's ControllerRefManager does.
                    crate::util::release_pod(&pods_api, &pod, &uid).await;
                }
            }
            None if matches && !deleting && pod.metadata.deletion_timestamp.is_none() => {
                if let Some(p) = crate::util::adopt_pod(&pods_api, &pod, rs).await {
                    mine.push(p);
                }
            }
            _ => {}
        }
    }
    let active: Vec<&Pod> = mine.iter().filter(|p| pod_active(p)).collect();

    if !deleting {
        if active.len() < want {
            let n = (want - active.len()).min(MAX_BATCH);
            let template = pod_from_template(rs)?;
            let pp = PostParams::default();
            let results = join_all((0..n).map(|_| pods_api.create(&pp, &template))).await;
            for r in results {
                match r {
                    Ok(p) => crate::events::normal(client, COMPONENT, rs, "SuccessfulCreate", format!("Created pod: {}", p.name_any())).await,
                    Err(e) => {
                        crate::events::record(client, COMPONENT, rs, "Warning", "FailedCreate", format!("Error creating: {e}")).await;
                        tracing::warn!(rs = %name, namespace = %ns, error = %e, "creating pod failed");
                    }
                }
            }
        } else if active.len() > want {
            let mut victims = active.clone();
            rank_for_deletion(&mut victims);
            for p in victims.into_iter().take(active.len() - want) {
                let pname = p.name_any();
                match pods_api.delete(&pname, &DeleteParams::default()).await {
                    Ok(_) => crate::events::normal(client, COMPONENT, rs, "SuccessfulDelete", format!("Deleted pod: {pname}")).await,
                    Err(e) if crate::util::is_not_found(&e) => {}
                    Err(e) => tracing::warn!(pod = %pname, namespace = %ns, error = %e, "deleting pod failed"),
                }
            }
        }
    }

    // Status describes the pods as they were listed; their events requeue us as they change.
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let now = jiff::Timestamp::now();
    let template_labels = spec.template.as_ref().and_then(|t| t.metadata.as_ref()).and_then(|m| m.labels.clone()).unwrap_or_default();
    let fully = active.iter().filter(|p| template_labels.iter().all(|(k, v)| p.labels().get(k) == Some(v))).count();
    let ready = active.iter().filter(|p| pod_ready(p)).count();
    let available = active.iter().filter(|p| pod_available(p, min_ready, now)).count();
    let old = rs.status.clone().unwrap_or_default();
    let status = ReplicaSetStatus {
        replicas: active.len() as i32,
        fully_labeled_replicas: Some(fully as i32),
        ready_replicas: Some(ready as i32),
        available_replicas: Some(available as i32),
        observed_generation: rs.metadata.generation,
        conditions: old.conditions.clone(),
        terminating_replicas: old.terminating_replicas,
    };
    if status != old {
        let rs_api = Api::<ReplicaSet>::namespaced(client.clone(), &ns);
        rs_api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({"status": status})))
            .await
            .with_context(|| format!("update status of replicaset {ns}/{name}"))?;
    }
    // A ready pod becomes available minReadySeconds later without any event: come back then.
    if min_ready > 0 && ready > available {
        return Ok(Action::requeue(Duration::from_secs(min_ready as u64 + 1)));
    }
    Ok(Action::await_change())
}

fn pod_from_template(rs: &ReplicaSet) -> anyhow::Result<Pod> {
    let template = rs.spec.as_ref().and_then(|s| s.template.clone()).context("ReplicaSet without pod template")?;
    let tm = template.metadata.unwrap_or_default();
    Ok(Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", rs.name_any())),
            namespace: rs.namespace(),
            labels: tm.labels,
            annotations: tm.annotations,
            finalizers: tm.finalizers,
            owner_references: Some(vec![owner_ref(rs).context("ReplicaSet without name or uid")?]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    })
}

/// Orders pods so the ones to delete first come first (upstream controller.ActivePods):
/// unscheduled before scheduled, Pending before Unknown before Running, not ready before
/// ready, ready for less time before longer, more restarts before fewer, newer before older.
pub fn rank_for_deletion(pods: &mut [&Pod]) {
    pods.sort_by(|a, b| deletion_order(a, b));
}

fn deletion_order(a: &Pod, b: &Pod) -> Ordering {
    let scheduled = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.as_deref()).map(|n| !n.is_empty()).unwrap_or(false);
    let phase_rank = |p: &Pod| match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") | None => 0,
        Some("Unknown") => 1,
        Some("Running") => 2,
        _ => 3,
    };
    let restarts = |p: &Pod| p.status.as_ref().and_then(|s| s.container_statuses.as_ref()).map(|cs| cs.iter().map(|c| c.restart_count).sum::<i32>()).unwrap_or(0);
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    scheduled(a)
        .cmp(&scheduled(b))
        .then(phase_rank(a).cmp(&phase_rank(b)))
        .then(pod_ready(a).cmp(&pod_ready(b)))
        // Both ready: the one ready more recently goes first.
        .then_with(|| match (pod_ready_since(a).flatten(), pod_ready_since(b).flatten()) {
            (Some(x), Some(y)) => y.cmp(&x),
            _ => Ordering::Equal,
        })
        .then(restarts(b).cmp(&restarts(a)))
        .then_with(|| created(b).cmp(&created(a)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn pod(name: &str, node: Option<&str>, phase: &str, ready_at: Option<i64>, created: i64) -> Pod {
        Pod {
            metadata: ObjectMeta { name: Some(name.into()), creation_timestamp: Some(Time(jiff::Timestamp::from_second(created).unwrap())), ..Default::default() },
            spec: Some(PodSpec { node_name: node.map(str::to_string), ..Default::default() }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: ready_at.map(|t| vec![PodCondition { type_: "Ready".into(), status: "True".into(), last_transition_time: Some(Time(jiff::Timestamp::from_second(t).unwrap())), ..Default::default() }]),
                ..Default::default()
            }),
        }
    }

    fn order(pods: &[Pod]) -> Vec<String> {
        let mut v: Vec<&Pod> = pods.iter().collect();
        rank_for_deletion(&mut v);
        v.iter().map(|p| p.name_any()).collect()
    }

    #[test]
    fn surplus_deletion_prefers_unscheduled_then_not_ready_then_newest() {
        let pods = vec![
            pod("old-ready", Some("n1"), "Running", Some(100), 10),
            pod("new-ready", Some("n1"), "Running", Some(100), 20),
            pod("running-not-ready", Some("n1"), "Running", None, 5),
            pod("pending", Some("n1"), "Pending", None, 1),
            pod("unscheduled", None, "Pending", None, 0),
        ];
        assert_eq!(order(&pods), ["unscheduled", "pending", "running-not-ready", "new-ready", "old-ready"]);
    }

    #[test]
    fn surplus_deletion_prefers_the_pod_ready_most_recently() {
        let pods = vec![pod("long", Some("n1"), "Running", Some(100), 50), pod("recent", Some("n1"), "Running", Some(200), 10)];
        assert_eq!(order(&pods), ["recent", "long"]);
    }

    #[test]
    fn pods_become_available_min_ready_seconds_after_ready() {
        let p = pod("p", Some("n1"), "Running", Some(100), 0);
        assert!(pod_available(&p, 0, jiff::Timestamp::from_second(100).unwrap()));
        assert!(!pod_available(&p, 10, jiff::Timestamp::from_second(105).unwrap()));
        assert!(pod_available(&p, 10, jiff::Timestamp::from_second(110).unwrap()));
    }
}
