//! Preemption (upstream's DefaultPreemption PostFilter) as a pure function over the cache: for
//! a pod that fits nowhere, the node where evicting the fewest, lowest-priority pods makes it fit.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;

use crate::cache::{key, Cache};
use crate::filter::{filter_node, PodInfo};
use crate::interpod::{selector_matches, Prepared};

pub fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// preemptionPolicy Never pods wait instead of preempting.
pub fn may_preempt(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.preemption_policy.as_deref()) != Some("Never")
}

#[derive(Debug)]
pub struct Candidate {
    pub node: String,
    pub victims: Vec<Arc<Pod>>,
    /// Victims whose eviction a PodDisruptionBudget does not allow.
    pub pdb_violations: usize,
}

impl Candidate {
    /// upstream's pickOneNodeForPreemption order: fewest PodDisruptionBudget violations, lowest
    /// highest-victim priority, then lowest priority sum, then fewest victims.
    fn rank(&self) -> (usize, i32, i64, usize) {
        let max = self.victims.iter().map(|v| priority(v)).max().unwrap_or(i32::MIN);
        let sum = self.victims.iter().map(|v| priority(v) as i64 - i32::MIN as i64).sum();
        (self.pdb_violations, max, sum, self.victims.len())
    }
}

/// For pods in the given order: whether evicting it (after the ones before it) exceeds a
/// PodDisruptionBudget's disruptionsAllowed.
pub fn pdb_violations(pods: &[&Arc<Pod>], pdbs: &[&PodDisruptionBudget]) -> Vec<bool> {
    let mut allowed: Vec<i64> = pdbs.iter().map(|b| b.status.as_ref().map_or(0, |s| s.disruptions_allowed as i64)).collect();
    pods.iter()
        .map(|p| {
            let labels = p.metadata.labels.clone().unwrap_or_default();
            let mut violating = false;
            for (i, b) in pdbs.iter().enumerate() {
                if b.metadata.namespace != p.metadata.namespace {
                    continue;
                }
                // policy/v1: an empty selector selects every pod of the namespace, a missing one none.
                let Some(sel) = b.spec.as_ref().and_then(|s| s.selector.as_ref()) else { continue };
                if !selector_matches(sel, &labels) {
                    continue;
                }
                allowed[i] -= 1;
                if allowed[i] < 0 {
                    violating = true;
                }
            }
            violating
        })
        .collect()
}

/// Whether the pod already waits for victims on `node` (pods of lower priority still there
/// and being deleted): then it does not preempt again (upstream's PodEligibleToPreemptOthers).
pub fn waiting_for_victims(cache: &Cache, pod: &Pod, node: &str) -> bool {
    let p = priority(pod);
    cache.node(node).is_some_and(|ni| ni.pods.values().any(|v| priority(v) < p && v.metadata.deletion_timestamp.is_some()))
}

/// Looks for the best node among `nodes` (indices into the cache's nodes, those where the pod
/// failed for reasons preemption can resolve). Inter-pod constraints are checked as they are
/// with the victims still in place.
pub fn find(cache: &Cache, pod: &Pod, prep: &Prepared, nodes: &[usize]) -> Option<Candidate> {
    if !may_preempt(pod) {
        return None;
    }
    let pdbs: Vec<&PodDisruptionBudget> = cache.pdbs.values().map(|b| b.as_ref()).collect();
    let pdbs = pdbs.as_slice();
    let info = PodInfo::of(pod);
    let prio = priority(pod);
    let own = key(pod);
    let mut best: Option<Candidate> = None;
    for &i in nodes {
        let Some(ni) = cache.nodes.get(i) else { continue };
        let Some(node) = ni.node.as_deref() else { continue };
        if prep.filter(node).is_err() {
            continue;
        }
        let mut lower: Vec<(&String, &Arc<Pod>)> = ni.pods.iter().filter(|(k, v)| **k != own && priority(v) < prio && v.metadata.deletion_timestamp.is_none()).collect();
        if lower.is_empty() {
            continue;
        }
        let mut usage = ni.usage.clone();
        let infos: Vec<PodInfo> = lower.iter().map(|(_, v)| PodInfo::of(v)).collect();
        for pi in &infos {
            usage.remove_info(pi);
        }
        let fits = |u: &crate::filter::NodeUsage| filter_node(pod, &info, node, &ni.alloc, ni.ready, u).is_ok();
        if !fits(&usage) {
            continue;
        }
        // Reprieve as many as possible, the most important first, and those a disruption
        // budget protects before the others.
        let mut order: Vec<usize> = (0..lower.len()).collect();
        order.sort_by(|a, b| priority(lower[*b].1).cmp(&priority(lower[*a].1)).then_with(|| lower[*a].0.cmp(lower[*b].0)));
        let ordered: Vec<&Arc<Pod>> = order.iter().map(|j| lower[*j].1).collect();
        let violating = pdb_violations(&ordered, pdbs);
        let mut reprieve: Vec<(usize, bool)> = order.iter().copied().zip(violating.iter().copied()).collect();
        reprieve.sort_by_key(|(_, v)| !*v);
        let mut victims = Vec::new();
        let mut pdb_violations = 0;
        for (j, v) in reprieve {
            usage.add_info(&infos[j]);
            if !fits(&usage) {
                usage.remove_info(&infos[j]);
                victims.push(lower[j].1.clone());
                pdb_violations += usize::from(v);
            }
        }
        lower.clear();
        let c = Candidate { node: ni.name.clone(), victims, pdb_violations };
        if best.as_ref().is_none_or(|b| c.rank() < b.rank()) {
            best = Some(c);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interpod::prepare;
    use k8s_openapi::api::core::v1::Node;
    use serde_json::json;

    fn node(name: &str, cpu: &str) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name}, "status": {"allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"}, "conditions": [{"type": "Ready", "status": "True"}]}}))
                .expect("node"),
        )
    }

    fn pod(name: &str, cpu: &str, prio: i32, node: Option<&str>) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "d", "uid": name},
            "spec": {"nodeName": node, "priority": prio, "containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": cpu}}}]}}))
        .expect("pod")
    }

    fn names(c: &Candidate) -> Vec<String> {
        let mut v: Vec<String> = c.victims.iter().filter_map(|p| p.metadata.name.clone()).collect();
        v.sort();
        v
    }

    fn all(c: &Cache) -> Vec<usize> {
        (0..c.nodes.len()).collect()
    }

    #[test]
    fn evicts_the_fewest_lowest_priority_pods() {
        let mut c = Cache::default();
        c.upsert_node(node("a", "4"));
        c.upsert_node(node("b", "4"));
        // a: two low pods of 1 cpu and one of 2; b: a mid pod of 4.
        c.update_pod(Arc::new(pod("l1", "1", 1, Some("a"))));
        c.update_pod(Arc::new(pod("l2", "1", 1, Some("a"))));
        c.update_pod(Arc::new(pod("l3", "2", 2, Some("a"))));
        c.update_pod(Arc::new(pod("m", "4", 5, Some("b"))));
        let p = pod("hi", "2", 10, None);
        let cand = find(&c, &p, &prepare(&c, &p), &all(&c)).expect("candidate");
        // On a, l3 (priority 2) is reprieved first and stays; l1 and l2 go. b would lose a
        // priority-5 pod, worse.
        assert_eq!(cand.node, "a");
        assert_eq!(names(&cand), ["l1", "l2"]);
    }

    #[test]
    fn equal_or_higher_priority_pods_are_never_victims_and_never_policy_waits() {
        let mut c = Cache::default();
        c.upsert_node(node("a", "2"));
        c.update_pod(Arc::new(pod("same", "2", 10, Some("a"))));
        let p = pod("hi", "1", 10, None);
        assert!(find(&c, &p, &prepare(&c, &p), &all(&c)).is_none());
        c.update_pod(Arc::new(pod("same", "2", 1, Some("a"))));
        let mut p = pod("hi", "1", 10, None);
        assert!(find(&c, &p, &prepare(&c, &p), &all(&c)).is_some());
        p.spec.as_mut().expect("spec").preemption_policy = Some("Never".into());
        assert!(find(&c, &p, &prepare(&c, &p), &all(&c)).is_none());
    }

    #[test]
    fn nodes_where_eviction_does_not_help_are_skipped() {
        let mut c = Cache::default();
        c.upsert_node(node("a", "2"));
        c.update_pod(Arc::new(pod("low", "1", 0, Some("a"))));
        let p = pod("hi", "3", 10, None);
        assert!(find(&c, &p, &prepare(&c, &p), &all(&c)).is_none());
    }

    #[test]
    fn disruption_budgets_steer_preemption_to_unprotected_pods() {
        let mut c = Cache::default();
        c.upsert_node(node("a", "2"));
        c.upsert_node(node("b", "2"));
        let mut guarded = pod("guarded", "2", 0, Some("a"));
        guarded.metadata.labels = Some([("app".to_string(), "db".to_string())].into());
        c.update_pod(Arc::new(guarded));
        // b's victim has a higher priority, but a's is protected by a budget allowing none.
        c.update_pod(Arc::new(pod("free", "2", 5, Some("b"))));
        let pdb: PodDisruptionBudget = serde_json::from_value(json!({"metadata": {"name": "db", "namespace": "d"},
            "spec": {"selector": {"matchLabels": {"app": "db"}}}, "status": {"disruptionsAllowed": 0, "currentHealthy": 1, "desiredHealthy": 1, "expectedPods": 1}}))
        .expect("pdb");
        let p = pod("hi", "2", 10, None);
        let without = find(&c, &p, &prepare(&c, &p), &all(&c)).expect("candidate");
        assert_eq!(without.node, "a");
        c.pdbs.insert("d/db".into(), Arc::new(pdb));
        let with = find(&c, &p, &prepare(&c, &p), &all(&c)).expect("candidate");
        assert_eq!((with.node.as_str(), with.pdb_violations), ("b", 0));
    }

    #[test]
    fn terminating_victims_mean_waiting() {
        let mut c = Cache::default();
        c.upsert_node(node("a", "2"));
        let mut v = pod("low", "2", 0, Some("a"));
        v.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()));
        c.update_pod(Arc::new(v));
        let p = pod("hi", "2", 10, None);
        assert!(waiting_for_victims(&c, &p, "a"));
        assert!(find(&c, &p, &prepare(&c, &p), &all(&c)).is_none(), "a terminating pod is not a victim again");
    }
}
