//! The scheduler's node-info cache, as kube-scheduler keeps one: per node the Node, its
//! allocatable resources parsed once, and what the pods on it (bound, or assumed by this
//! scheduler while their binding is in flight) use. Updated from watch events one object at a
//! time, never rebuilt from the whole pod list.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use tokio::time::Instant;

use crate::filter::{node_allocatable, node_ready, NodeUsage, PodInfo, Resources};

pub struct NodeInfo {
    pub name: String,
    /// None once the Node was deleted while pods were still counted on it.
    pub node: Option<Arc<Node>>,
    pub alloc: Resources,
    pub ready: bool,
    pub usage: NodeUsage,
    /// The pods counted here, by namespace/name (for inter-pod affinity and spreading).
    pub pods: HashMap<String, Arc<Pod>>,
}

/// A pod counted on a node.
struct Counted {
    uid: String,
    node: String,
    info: PodInfo,
    /// This scheduler assumed it there; Some(t) once the binding call returned at t.
    assumed: Option<Option<Instant>>,
}

#[derive(Default)]
pub struct Cache {
    /// Nodes in a stable order for the rotating search; `index` maps names to positions.
    pub nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    counted: HashMap<String, Counted>,
    /// Nodes with a Node object (the rest only hold pods of a deleted node).
    live: usize,
    /// Pods assumed and not confirmed yet.
    assumed: usize,
    /// Counted pods with required anti-affinity: their nodes and terms.
    anti: HashMap<String, (String, Vec<String>)>,
    /// The distinct required anti-affinity terms of counted pods (by signature), with how
    /// many pods carry each per node: an incoming pod is matched once per distinct term.
    anti_terms: HashMap<String, (Arc<crate::interpod::Term>, HashMap<String, i64>)>,
    /// Claims, volumes and storage classes, for volume binding.
    pub volumes: crate::volume::Volumes,
    /// Preemptors waiting for their victims to go, by key: (nominated node, priority, requests).
    /// They hold their room on that node against pods of lower or equal priority.
    pub nominated: HashMap<String, (String, i32, PodInfo)>,
    /// PodDisruptionBudgets by namespace/name, for preemption.
    pub pdbs: HashMap<String, Arc<k8s_openapi::api::policy::v1::PodDisruptionBudget>>,
    /// Namespace labels, for namespaceSelector in affinity terms.
    pub namespaces: HashMap<String, BTreeMap<String, String>>,
    /// Counted pods by (namespace, label key, label value), with their nodes: the pods a
    /// selector can match are among those carrying one of its matchLabels pairs, so
    /// inter-pod affinity looks at those instead of every pod in the cache.
    by_label: HashMap<(String, String, String), Labelled>,
}

/// Pods carrying one label pair: key -> (node, pod).
pub type Labelled = HashMap<String, (String, Arc<Pod>)>;

/// namespace/name
pub fn key(pod: &Pod) -> String {
    format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or(""), pod.metadata.name.as_deref().unwrap_or(""))
}

pub fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).filter(|n| !n.is_empty())
}

pub fn is_terminal(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

impl Cache {
    /// Nodes that exist (deleted ones still holding pods are not counted).
    pub fn num_nodes(&self) -> usize {
        self.live
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|i| &self.nodes[*i])
    }

    fn slot(&mut self, name: &str) -> &mut NodeInfo {
        let i = match self.index.get(name) {
            Some(i) => *i,
            None => {
                self.nodes.push(NodeInfo { name: name.to_string(), node: None, alloc: Resources::new(), ready: false, usage: NodeUsage::default(), pods: HashMap::new() });
                self.index.insert(name.to_string(), self.nodes.len() - 1);
                self.nodes.len() - 1
            }
        };
        &mut self.nodes[i]
    }

    fn drop_if_empty(&mut self, name: &str) {
        let Some(&i) = self.index.get(name) else { return };
        if self.nodes[i].node.is_some() || !self.nodes[i].pods.is_empty() {
            return;
        }
        self.index.remove(name);
        self.nodes.swap_remove(i);
        if i < self.nodes.len() {
            self.index.insert(self.nodes[i].name.clone(), i);
        }
    }

    pub fn upsert_node(&mut self, node: Arc<Node>) {
        let Some(name) = node.metadata.name.clone() else { return };
        let alloc = node_allocatable(&node);
        let ready = node_ready(&node);
        let info = self.slot(&name);
        let was = info.node.is_some();
        info.alloc = alloc;
        info.ready = ready;
        info.node = Some(node);
        if !was {
            self.live += 1;
        }
    }

    pub fn remove_node(&mut self, name: &str) {
        let Some(&i) = self.index.get(name) else { return };
        if self.nodes[i].node.take().is_some() {
            self.live -= 1;
        }
        self.drop_if_empty(name);
    }

    pub fn node_names(&self) -> Vec<String> {
        self.nodes.iter().filter(|n| n.node.is_some()).map(|n| n.name.clone()).collect()
    }

    fn uncount(&mut self, key: &str) -> Option<Counted> {
        let c = self.counted.remove(key)?;
        if c.assumed.is_some() {
            self.assumed -= 1;
        }
        if let Some((node, sigs)) = self.anti.remove(key) {
            for sig in sigs {
                if let Some((_, nodes)) = self.anti_terms.get_mut(&sig) {
                    if let Some(n) = nodes.get_mut(&node) {
                        *n -= 1;
                        if *n <= 0 {
                            nodes.remove(&node);
                        }
                    }
                    if nodes.is_empty() {
                        self.anti_terms.remove(&sig);
                    }
                }
            }
        }
        if let Some(&i) = self.index.get(&c.node) {
            let n = &mut self.nodes[i];
            n.usage.remove_info(&c.info);
            if let Some(old) = n.pods.remove(key) {
                self.unindex(key, &old);
            }
        }
        let node = c.node.clone();
        self.drop_if_empty(&node);
        Some(c)
    }

    fn count(&mut self, key: String, pod: Arc<Pod>, node: &str, assumed: Option<Option<Instant>>) {
        let info = PodInfo::of(&pod);
        if assumed.is_some() {
            self.assumed += 1;
        }
        if crate::interpod::has_required_anti_affinity(&pod) {
            let mut sigs = Vec::new();
            for t in crate::interpod::required_terms(&pod, true) {
                let sig = t.signature();
                *self.anti_terms.entry(sig.clone()).or_insert_with(|| (Arc::new(t), HashMap::new())).1.entry(node.to_string()).or_default() += 1;
                sigs.push(sig);
            }
            self.anti.insert(key.clone(), (node.to_string(), sigs));
        }
        self.index_labels(&key, node, &pod);
        let n = self.slot(node);
        n.usage.add_info(&info);
        n.pods.insert(key.clone(), pod.clone());
        self.counted.insert(key, Counted { uid: uid(&pod), node: node.to_string(), info, assumed });
    }

    fn index_labels(&mut self, key: &str, node: &str, pod: &Arc<Pod>) {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        for (k, v) in pod.metadata.labels.iter().flatten() {
            self.by_label.entry((ns.clone(), k.clone(), v.clone())).or_default().insert(key.to_string(), (node.to_string(), pod.clone()));
        }
    }

    fn unindex(&mut self, key: &str, pod: &Pod) {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        for (k, v) in pod.metadata.labels.iter().flatten() {
            let id = (ns.clone(), k.clone(), v.clone());
            if let Some(m) = self.by_label.get_mut(&id) {
                m.remove(key);
                if m.is_empty() {
                    self.by_label.remove(&id);
                }
            }
        }
    }

    /// How many pods are counted on nodes.
    pub fn pod_count(&self) -> usize {
        self.counted.len()
    }

    /// Counted pods of namespace `ns` labelled `k=v`.
    pub fn labelled(&self, ns: &str, k: &str, v: &str) -> Option<&Labelled> {
        self.by_label.get(&(ns.to_string(), k.to_string(), v.to_string()))
    }

    /// A pod as the watch shows it. Returns whether what nodes hold changed (a pod was added
    /// to or left a node, or a counted pod's requests or labels changed), which is what can
    /// make an unschedulable pod fit.
    pub fn update_pod(&mut self, pod: Arc<Pod>) -> bool {
        let k = key(&pod);
        let target = node_name(&pod).filter(|_| !is_terminal(&pod)).map(str::to_string);
        if let Some(c) = self.counted.get(&k) {
            // Our assumption holds until the watch shows the binding (or the pod is replaced).
            if c.assumed.is_some() && c.uid == uid(&pod) && target.is_none() && !is_terminal(&pod) {
                let node = c.node.clone();
                if let Some(n) = self.index.get(&node).map(|i| &mut self.nodes[*i]) {
                    if let Some(old) = n.pods.insert(k.clone(), pod.clone()) {
                        self.unindex(&k, &old);
                    }
                    self.index_labels(&k, &node, &pod);
                }
                return false;
            }
        }
        let old_labels = self.counted.get(&k).and_then(|c| self.node(&c.node)).and_then(|n| n.pods.get(&k)).map(|p| p.metadata.labels.clone());
        let old = self.uncount(&k);
        match target {
            Some(node) => {
                let same = old.as_ref().is_some_and(|o| o.node == node && o.uid == uid(&pod) && o.info == PodInfo::of(&pod) && old_labels.as_ref() == Some(&pod.metadata.labels));
                self.count(k, pod, &node, None);
                !same
            }
            None => old.is_some(),
        }
    }

    /// The pod is gone. Returns whether it was counted on a node.
    pub fn delete_pod(&mut self, key: &str) -> bool {
        self.uncount(key).is_some()
    }

    /// Counts a pod on the node this scheduler chose, before its binding is written.
    pub fn assume(&mut self, pod: Arc<Pod>, node: &str) {
        let k = key(&pod);
        self.uncount(&k);
        self.count(k, pod, node, Some(None));
    }

    /// The binding call returned: start the expiry clock of the assumption (if the watch has
    /// not confirmed it already).
    pub fn finish_binding(&mut self, key: &str, uid: &str) {
        if let Some(c) = self.counted.get_mut(key) {
            if c.uid == uid && c.assumed == Some(None) {
                c.assumed = Some(Some(Instant::now()));
            }
        }
    }

    /// Drops an assumption (the binding failed). Returns whether there was one.
    pub fn forget(&mut self, key: &str, uid: &str) -> bool {
        if self.counted.get(key).is_some_and(|c| c.uid == uid && c.assumed.is_some()) {
            self.uncount(key);
            return true;
        }
        false
    }

    /// The distinct required anti-affinity terms of counted pods, with how many pods carry
    /// each per node.
    pub fn anti_affinity_terms(&self) -> impl Iterator<Item = (&crate::interpod::Term, &HashMap<String, i64>)> {
        self.anti_terms.values().map(|(t, n)| (t.as_ref(), n))
    }

    /// The node's usage with the room nominated to preemptors of at least `priority` (other
    /// than `own`) added; None when there are none.
    pub fn with_nominated(&self, node: &NodeInfo, priority: i32, own: &str) -> Option<NodeUsage> {
        if self.nominated.is_empty() {
            return None;
        }
        let mut usage: Option<NodeUsage> = None;
        for (k, (n, p, info)) in &self.nominated {
            if *n == node.name && *p >= priority && k != own {
                usage.get_or_insert_with(|| node.usage.clone()).add_info(info);
            }
        }
        usage
    }

    /// Pods assumed and not confirmed by the watch yet.
    pub fn assumed_count(&self) -> usize {
        self.assumed
    }

    pub fn is_assumed(&self, key: &str) -> bool {
        self.counted.get(key).is_some_and(|c| c.assumed.is_some())
    }

    /// Drops assumptions whose binding returned longer than `ttl` ago without the watch
    /// showing it. Returns how many.
    pub fn expire(&mut self, ttl: std::time::Duration) -> usize {
        let old: Vec<String> = self.counted.iter().filter(|(_, c)| matches!(c.assumed, Some(Some(t)) if t.elapsed() >= ttl)).map(|(k, _)| k.clone()).collect();
        for k in &old {
            self.uncount(k);
        }
        old.len()
    }

    /// Keys of every counted pod (for resyncs).
    pub fn counted_keys(&self) -> Vec<String> {
        self.counted.keys().cloned().collect()
    }
}

/// upstream's numFeasibleNodesToFind with the adaptive percentageOfNodesToScore: all nodes up
/// to 100, else 50% - nodes/125 (at least 5%) of them, but at least 100.
pub fn nodes_to_find(all: usize) -> usize {
    const MIN_FEASIBLE: usize = 100;
    if all < MIN_FEASIBLE {
        return all;
    }
    let pct = (50 - (all / 125) as i64).max(5) as usize;
    (all * pct / 100).max(MIN_FEASIBLE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name}, "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "10"}, "conditions": [{"type": "Ready", "status": "True"}]}}))
                .expect("node"),
        )
    }

    fn pod(name: &str, uid: &str, node: Option<&str>, cpu: &str) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "d", "uid": uid, "labels": {"app": "a"}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": cpu}}}]}}))
            .expect("pod"),
        )
    }

    fn cpu(c: &Cache, n: &str) -> i128 {
        c.node(n).map(|n| n.usage.requested.get("cpu")).unwrap_or(0)
    }

    #[test]
    fn bound_pods_are_counted_moved_and_released() {
        let mut c = Cache::default();
        c.upsert_node(node("a"));
        c.upsert_node(node("b"));
        assert!(!c.update_pod(pod("p", "1", None, "1")), "a pending pod holds nothing");
        assert!(c.update_pod(pod("p", "1", Some("a"), "1")));
        assert_eq!(cpu(&c, "a"), 1000);
        assert!(!c.update_pod(pod("p", "1", Some("a"), "1")), "a status update changes nothing");
        assert!(c.delete_pod("d/p"));
        assert_eq!(cpu(&c, "a"), 0);
        assert_eq!(c.node("a").map(|n| n.usage.pods), Some(0));
    }

    #[test]
    fn assumed_pods_count_until_confirmed_or_forgotten() {
        let mut c = Cache::default();
        c.upsert_node(node("a"));
        c.assume(pod("p", "1", None, "500m"), "a");
        assert!(c.is_assumed("d/p"));
        // An update that does not show the binding yet keeps the assumption.
        assert!(!c.update_pod(pod("p", "1", None, "500m")));
        assert_eq!(cpu(&c, "a"), 500);
        // The watch shows it bound: counted once, no longer assumed.
        c.update_pod(pod("p", "1", Some("a"), "500m"));
        assert!(!c.is_assumed("d/p"));
        assert_eq!(cpu(&c, "a"), 500);
        assert!(!c.forget("d/p", "1"), "a confirmed pod is not forgotten");

        c.assume(pod("q", "2", None, "1"), "a");
        assert!(c.forget("d/q", "2"));
        assert_eq!(cpu(&c, "a"), 500);
    }

    #[test]
    fn assumptions_expire_only_after_the_binding_returned() {
        let mut c = Cache::default();
        c.upsert_node(node("a"));
        c.assume(pod("p", "1", None, "1"), "a");
        assert_eq!(c.expire(std::time::Duration::ZERO), 0);
        c.finish_binding("d/p", "1");
        assert_eq!(c.expire(std::time::Duration::ZERO), 1);
        assert_eq!(cpu(&c, "a"), 0);
    }

    #[test]
    fn deleted_nodes_keep_their_pods_until_they_leave() {
        let mut c = Cache::default();
        c.upsert_node(node("a"));
        c.update_pod(pod("p", "1", Some("a"), "1"));
        c.remove_node("a");
        assert_eq!(c.num_nodes(), 0);
        assert!(c.node("a").is_some());
        c.delete_pod("d/p");
        assert!(c.node("a").is_none());
    }

    #[test]
    fn terminal_pods_free_their_node() {
        let mut c = Cache::default();
        c.upsert_node(node("a"));
        c.update_pod(pod("p", "1", Some("a"), "1"));
        let mut done = (*pod("p", "1", Some("a"), "1")).clone();
        done.status = Some(k8s_openapi::api::core::v1::PodStatus { phase: Some("Succeeded".into()), ..Default::default() });
        assert!(c.update_pod(Arc::new(done)));
        assert_eq!(cpu(&c, "a"), 0);
    }

    #[test]
    fn percentage_of_nodes_to_score_is_adaptive() {
        assert_eq!(nodes_to_find(50), 50);
        assert_eq!(nodes_to_find(100), 100);
        // 50 - 1000/125 = 42%
        assert_eq!(nodes_to_find(1000), 420);
        // 50 - 5000/125 = 10%
        assert_eq!(nodes_to_find(5000), 500);
        // at least 5%
        assert_eq!(nodes_to_find(10_000), 500);
        assert_eq!(nodes_to_find(200), 100);
    }
}
