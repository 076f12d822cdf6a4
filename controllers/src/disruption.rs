//! Disruption controller: keeps every PodDisruptionBudget's status (expectedPods,
//! desiredHealthy, currentHealthy, disruptionsAllowed, disruptedPods, the DisruptionAllowed
//! condition) true to the pods it selects. The eviction API spends disruptionsAllowed by
//! compare-and-swap; this controller writes status with the budget's resourceVersion too, so an
//! eviction in flight is never overwritten with an older count.
//!
//! As upstream: an integer minAvailable counts the selected pods; maxUnavailable or a
//! percentage needs the scale of the pods' controllers (Deployment through its ReplicaSet,
//! ReplicaSet, StatefulSet, ReplicationController), and with a pod that has no controller no
//! disruption is allowed. Pods just evicted (in disruptedPods, not yet deleting, for at most two
//! minutes) do not count as healthy.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::deployment::resolve_int_or_percent;
use crate::util::{controller_ref, pod_ready, selector_matches};

const COMPONENT: &str = "controllermanager";
/// How long an evicted pod may take to start deleting before it counts again (upstream
/// DeletionTimeout).
const DELETION_TIMEOUT: i64 = 120;

struct Ctx {
    client: Client,
}

pub async fn run(client: Client, inf: Arc<crate::informer::Informers>) -> anyhow::Result<()> {
    let ctl = Controller::new(Api::<PodDisruptionBudget>::all(client.clone()), watcher::Config::default());
    let store = ctl.store();
    let ctl = ctl.watches_shared_stream(inf.pods.subscribe(), move |pod: Arc<Pod>| {
        let ns = pod.namespace();
        store
            .state()
            .iter()
            .filter(|pdb| pdb.namespace() == ns && pdb.spec.as_ref().and_then(|s| s.selector.as_ref()).is_some_and(|sel| selector_matches(sel, pod.metadata.labels.as_ref())))
            .map(|pdb| ObjectRef::from_obj(pdb.as_ref()))
            .collect::<Vec<_>>()
    });
    crate::util::drain("disruption", ctl.run(reconcile, crate::util::error_policy, Arc::new(Ctx { client }))).await;
    Ok(())
}

async fn reconcile(pdb: Arc<PodDisruptionBudget>, ctx: Arc<Ctx>) -> Result<Action, crate::Error> {
    Ok(sync(&pdb, &ctx.client).await?)
}

/// What the budget asks for, given the pods and (when needed) their controllers' scale.
#[derive(Debug, PartialEq)]
pub struct Targets {
    pub expected: i32,
    pub desired_healthy: i32,
}

/// upstream getExpectedPodCount: `scale` is the summed replicas of the pods' controllers, None
/// when some pod has no controller we can scale.
pub fn targets(min_available: Option<&IntOrString>, max_unavailable: Option<&IntOrString>, pods: i32, scale: Option<i32>) -> anyhow::Result<Targets> {
    match (max_unavailable, min_available) {
        (Some(mu), _) => {
            let expected = scale.context("found no controllers for the pods")?;
            let unavailable = resolve_int_or_percent(mu, expected, true)?;
            Ok(Targets { expected, desired_healthy: (expected - unavailable).max(0) })
        }
        (None, Some(IntOrString::Int(n))) => Ok(Targets { expected: pods, desired_healthy: *n }),
        (None, Some(ma @ IntOrString::String(_))) => {
            let expected = scale.context("found no controllers for the pods")?;
            Ok(Targets { expected, desired_healthy: resolve_int_or_percent(ma, expected, true)? })
        }
        // Neither: nothing is required, every healthy pod may be disrupted (as upstream).
        (None, None) => Ok(Targets { expected: 0, desired_healthy: 0 }),
    }
}

async fn sync(pdb: &PodDisruptionBudget, client: &Client) -> anyhow::Result<Action> {
    let ns = pdb.namespace().context("budget without namespace")?;
    let name = pdb.name_any();
    let spec = pdb.spec.clone().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pods: Vec<Pod> = match &spec.selector {
        // policy/v1: a null selector selects nothing, an empty one everything.
        None => vec![],
        Some(sel) => pods_api.list(&ListParams::default()).await?.items.into_iter().filter(|p| selector_matches(sel, p.metadata.labels.as_ref())).collect(),
    };
    let now = jiff::Timestamp::now();

    let needs_scale = spec.max_unavailable.is_some() || matches!(spec.min_available, Some(IntOrString::String(_)));
    let scale = if needs_scale { controllers_scale(client, &ns, &pods).await? } else { None };
    let targets = targets(spec.min_available.as_ref(), spec.max_unavailable.as_ref(), pods.len() as i32, scale);

    // Evictions the pods have not acted on yet, dropped once the pod is deleting or after the
    // timeout.
    let old = pdb.status.clone().unwrap_or_default();
    let mut disrupted: BTreeMap<String, Time> = BTreeMap::new();
    let mut next_expiry: Option<i64> = None;
    for (pod_name, at) in old.disrupted_pods.iter().flatten() {
        let alive = pods.iter().any(|p| p.name_any() == *pod_name && p.metadata.deletion_timestamp.is_none());
        let age = now.as_second() - at.0.as_second();
        if alive && age < DELETION_TIMEOUT {
            disrupted.insert(pod_name.clone(), at.clone());
            next_expiry = Some(next_expiry.map_or(DELETION_TIMEOUT - age, |e: i64| e.min(DELETION_TIMEOUT - age)));
        }
    }
    let healthy = pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none() && pod_ready(p) && !disrupted.contains_key(&p.name_any())).count() as i32;

    let (expected, desired, allowed, reason, message) = match &targets {
        Ok(t) => {
            let allowed = (healthy - t.desired_healthy).max(0);
            (t.expected, t.desired_healthy, allowed, if allowed > 0 { "SufficientPods" } else { "InsufficientPods" }, String::new())
        }
        Err(e) => {
            crate::events::record(client, COMPONENT, pdb, "Warning", "CalculateExpectedPodCountFailed", format!("Failed to calculate the number of expected pods: {e:#}")).await;
            (0, 0, 0, "SyncFailed", format!("{e:#}"))
        }
    };
    let cond_status = if allowed > 0 { "True" } else { "False" };
    let old_cond = old.conditions.iter().flatten().find(|c| c.type_ == "DisruptionAllowed");
    let transition = match old_cond {
        Some(c) if c.status == cond_status => c.last_transition_time.clone(),
        _ => Time(now),
    };
    let status = PodDisruptionBudgetStatus {
        observed_generation: pdb.metadata.generation,
        disrupted_pods: if disrupted.is_empty() { None } else { Some(disrupted) },
        disruptions_allowed: allowed,
        current_healthy: healthy,
        desired_healthy: desired,
        expected_pods: expected,
        conditions: Some(vec![Condition {
            type_: "DisruptionAllowed".into(),
            status: cond_status.into(),
            reason: reason.into(),
            message,
            observed_generation: pdb.metadata.generation,
            last_transition_time: transition,
        }]),
    };
    let mut old_cmp = old.clone();
    if old_cmp.disrupted_pods.as_ref().is_some_and(|d| d.is_empty()) {
        old_cmp.disrupted_pods = None;
    }
    if status != old_cmp {
        let api: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
        // Replace the whole status, guarded by the resourceVersion we computed it from.
        let mut body = json!({"metadata": {"resourceVersion": pdb.metadata.resource_version}, "status": status});
        if status.disrupted_pods.is_none() {
            body["status"]["disruptedPods"] = serde_json::Value::Null;
        }
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(body)).await.with_context(|| format!("update status of poddisruptionbudget {ns}/{name}"))?;
    }
    Ok(match next_expiry {
        Some(s) => Action::requeue(Duration::from_secs(s.max(1) as u64)),
        None => Action::await_change(),
    })
}

/// The summed replicas of the distinct controllers of `pods` (a Deployment counted through its
/// ReplicaSets once), or None when a pod has no controller or one we cannot scale.
async fn controllers_scale(client: &Client, ns: &str, pods: &[Pod]) -> anyhow::Result<Option<i32>> {
    let mut seen: HashSet<String> = HashSet::new();
    let mut total = 0;
    for pod in pods {
        let Some(c) = controller_ref(&pod.metadata) else { return Ok(None) };
        let replicas = match (c.api_version.split('/').next().unwrap_or(""), c.kind.as_str()) {
            ("apps", "ReplicaSet") => {
                let Some(rs) = Api::<ReplicaSet>::namespaced(client.clone(), ns).get_opt(&c.name).await? else { return Ok(None) };
                match controller_ref(&rs.metadata).filter(|d| d.kind == "Deployment") {
                    Some(d) => {
                        if !seen.insert(format!("Deployment/{}", d.uid)) {
                            continue;
                        }
                        let Some(dep) = Api::<Deployment>::namespaced(client.clone(), ns).get_opt(&d.name).await? else { return Ok(None) };
                        dep.spec.and_then(|s| s.replicas).unwrap_or(1)
                    }
                    None => {
                        if !seen.insert(format!("ReplicaSet/{}", c.uid)) {
                            continue;
                        }
                        rs.spec.and_then(|s| s.replicas).unwrap_or(1)
                    }
                }
            }
            ("apps", "StatefulSet") => {
                if !seen.insert(format!("StatefulSet/{}", c.uid)) {
                    continue;
                }
                let Some(s) = Api::<StatefulSet>::namespaced(client.clone(), ns).get_opt(&c.name).await? else { return Ok(None) };
                s.spec.and_then(|s| s.replicas).unwrap_or(1)
            }
            ("v1", "ReplicationController") => {
                if !seen.insert(format!("ReplicationController/{}", c.uid)) {
                    continue;
                }
                let Some(rc) = Api::<ReplicationController>::namespaced(client.clone(), ns).get_opt(&c.name).await? else { return Ok(None) };
                rc.spec.and_then(|s| s.replicas).unwrap_or(1)
            }
            _ => return Ok(None),
        };
        total += replicas;
    }
    Ok(Some(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pct(s: &str) -> IntOrString {
        IntOrString::String(s.into())
    }

    #[test]
    fn integer_min_available_counts_the_selected_pods() {
        assert_eq!(targets(Some(&IntOrString::Int(2)), None, 5, None).unwrap(), Targets { expected: 5, desired_healthy: 2 });
    }

    #[test]
    fn max_unavailable_and_percentages_use_the_controllers_scale_rounding_up() {
        assert_eq!(targets(None, Some(&IntOrString::Int(1)), 2, Some(3)).unwrap(), Targets { expected: 3, desired_healthy: 2 });
        // 30% of 5 rounds up to 2 unavailable.
        assert_eq!(targets(None, Some(&pct("30%")), 5, Some(5)).unwrap(), Targets { expected: 5, desired_healthy: 3 });
        // 50% of 5 available rounds up to 3.
        assert_eq!(targets(Some(&pct("50%")), None, 5, Some(5)).unwrap(), Targets { expected: 5, desired_healthy: 3 });
        assert_eq!(targets(None, Some(&IntOrString::Int(9)), 2, Some(3)).unwrap().desired_healthy, 0);
    }

    #[test]
    fn without_controllers_a_scaled_budget_cannot_be_computed() {
        assert!(targets(None, Some(&IntOrString::Int(1)), 2, None).is_err());
        assert!(targets(Some(&pct("50%")), None, 2, None).is_err());
    }
}
