//! Constraints between pods, as upstream's InterPodAffinity and PodTopologySpread plugins
//! compute them: a per-pod precomputation over the cache (PreFilter/PreScore: counts of
//! matching pods per topology domain), then cheap per-node checks and scores. Pure functions
//! over the cache snapshot.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Node, Pod, PodAffinityTerm};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::cache::{Cache, NodeInfo};
use crate::filter::{matches_node_selector, untolerated_taint, Failure};

pub const AFFINITY_RULES: &str = "node(s) didn't match pod affinity rules";
pub const ANTI_AFFINITY_RULES: &str = "node(s) didn't match pod anti-affinity rules";
pub const EXISTING_ANTI_AFFINITY: &str = "node(s) didn't satisfy existing pods anti-affinity rules";
pub const SPREAD: &str = "node(s) didn't match pod topology spread constraints";
pub const SPREAD_MISSING_LABEL: &str = "node(s) didn't match pod topology spread constraints (missing required label)";

type Labels = BTreeMap<String, String>;

fn empty() -> &'static Labels {
    static E: std::sync::OnceLock<Labels> = std::sync::OnceLock::new();
    E.get_or_init(Labels::new)
}

fn pod_labels(p: &Pod) -> &Labels {
    p.metadata.labels.as_ref().unwrap_or(empty())
}

fn node_labels(n: &Node) -> &Labels {
    n.metadata.labels.as_ref().unwrap_or(empty())
}

/// metav1.LabelSelectorAsSelector semantics: every matchLabels pair and every expression.
pub fn selector_matches(sel: &LabelSelector, labels: &Labels) -> bool {
    for (k, v) in sel.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return false;
        }
    }
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or(&[]);
        let have = labels.get(&e.key);
        let ok = match e.operator.as_str() {
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => have.is_none_or(|v| !values.contains(v)),
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

/// An affinity term resolved against the pod that carries it.
pub struct Term {
    topology_key: String,
    selector: Option<LabelSelector>,
    namespaces: Vec<String>,
    namespace_selector: Option<LabelSelector>,
    weight: i64,
}

impl Term {
    fn new(t: &PodAffinityTerm, owner: &Pod, weight: i64) -> Term {
        let mut namespaces = t.namespaces.clone().unwrap_or_default();
        if namespaces.is_empty() && t.namespace_selector.is_none() {
            namespaces.push(owner.metadata.namespace.clone().unwrap_or_default());
        }
        Term { topology_key: t.topology_key.clone(), selector: t.label_selector.clone(), namespaces, namespace_selector: t.namespace_selector.clone(), weight }
    }

    /// Equal for equal terms (their weight aside).
    pub fn signature(&self) -> String {
        let json = |s: &Option<LabelSelector>| s.as_ref().map(|s| serde_json::to_string(s).unwrap_or_default()).unwrap_or_default();
        format!("{}\0{:?}\0{}\0{}", self.topology_key, self.namespaces, json(&self.namespace_selector), json(&self.selector))
    }

    /// Whether `pod` is one the term selects. A missing labelSelector selects nothing.
    fn matches(&self, pod: &Pod, ns_labels: &HashMap<String, Labels>) -> bool {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("");
        let in_ns = self.namespaces.iter().any(|n| n == ns) || self.namespace_selector.as_ref().is_some_and(|s| selector_matches(s, ns_labels.get(ns).unwrap_or(empty())));
        in_ns && self.selector.as_ref().is_some_and(|s| selector_matches(s, pod_labels(pod)))
    }
}

pub fn required_terms(pod: &Pod, anti: bool) -> Vec<Term> {
    let a = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
    let terms = if anti {
        a.and_then(|a| a.pod_anti_affinity.as_ref()).and_then(|x| x.required_during_scheduling_ignored_during_execution.as_ref())
    } else {
        a.and_then(|a| a.pod_affinity.as_ref()).and_then(|x| x.required_during_scheduling_ignored_during_execution.as_ref())
    };
    terms.into_iter().flatten().map(|t| Term::new(t, pod, 1)).collect()
}

fn preferred_terms(pod: &Pod) -> Vec<Term> {
    let a = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
    let aff = a.and_then(|a| a.pod_affinity.as_ref()).and_then(|x| x.preferred_during_scheduling_ignored_during_execution.as_ref());
    let anti = a.and_then(|a| a.pod_anti_affinity.as_ref()).and_then(|x| x.preferred_during_scheduling_ignored_during_execution.as_ref());
    let mut out: Vec<Term> = aff.into_iter().flatten().filter(|w| w.weight != 0).map(|w| Term::new(&w.pod_affinity_term, pod, w.weight as i64)).collect();
    out.extend(anti.into_iter().flatten().filter(|w| w.weight != 0).map(|w| Term::new(&w.pod_affinity_term, pod, -(w.weight as i64))));
    out
}

/// Whether the pod carries required anti-affinity (the cache indexes those pods).
pub fn has_required_anti_affinity(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.affinity.as_ref()).and_then(|a| a.pod_anti_affinity.as_ref()).and_then(|x| x.required_during_scheduling_ignored_during_execution.as_ref()).is_some_and(|t| !t.is_empty())
}

type Pair = (String, String);

struct SpreadConstraint {
    max_skew: i64,
    key: String,
    selector: Option<LabelSelector>,
    min_domains: Option<i64>,
    honor_affinity: bool,
    honor_taints: bool,
    /// Pods matching the selector per domain value, over the eligible nodes.
    counts: HashMap<String, i64>,
    self_match: bool,
}

/// What PreFilter/PreScore computed for one incoming pod.
#[derive(Default)]
pub struct Prepared {
    affinity: Vec<Term>,
    anti: Vec<Term>,
    /// (topologyKey, value) -> existing pods matching all required affinity terms.
    affinity_counts: HashMap<Pair, i64>,
    self_affinity: bool,
    anti_counts: HashMap<Pair, i64>,
    /// (topologyKey, value) -> existing pods whose required anti-affinity selects the incoming pod.
    existing_anti: HashMap<Pair, i64>,
    hard: Vec<SpreadConstraint>,
    soft: Vec<SpreadConstraint>,
    preferred: HashMap<Pair, i64>,
}

fn pod_is_counted_for_spread(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
}

fn spread_constraints(pod: &Pod, hard: bool) -> Vec<SpreadConstraint> {
    let Some(spec) = &pod.spec else { return vec![] };
    let labels = pod_labels(pod);
    spec.topology_spread_constraints
        .iter()
        .flatten()
        .filter(|c| (c.when_unsatisfiable == "DoNotSchedule") == hard)
        .map(|c| {
            let mut selector = c.label_selector.clone();
            // matchLabelKeys: the incoming pod's values of those keys narrow the selector.
            if let (Some(sel), Some(keys)) = (selector.as_mut(), c.match_label_keys.as_ref()) {
                for k in keys {
                    if let Some(v) = labels.get(k) {
                        sel.match_labels.get_or_insert_with(Default::default).insert(k.clone(), v.clone());
                    }
                }
            }
            SpreadConstraint {
                max_skew: c.max_skew as i64,
                key: c.topology_key.clone(),
                self_match: selector.as_ref().is_some_and(|s| selector_matches(s, labels)),
                selector,
                min_domains: c.min_domains.map(i64::from),
                honor_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
                honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
                counts: HashMap::new(),
            }
        })
        .collect()
}

/// Counts matching pods per domain over the nodes eligible for the constraints (all topology
/// keys present, node affinity and taints per the policies). Every eligible node's domain is
/// present, with 0 if no pod matches there. The pods counted come from the cache's label index
/// when the selector has matchLabels (the pods carrying its rarest pair), else from every node.
fn count_spread(constraints: &mut [SpreadConstraint], pod: &Pod, cache: &Cache, use_index: bool) {
    if constraints.is_empty() {
        return;
    }
    let ns = pod.metadata.namespace.as_deref().unwrap_or("");
    let all_keys = |labels: &Labels| constraints.iter().all(|c| labels.contains_key(&c.key));
    let keys_ok: Vec<bool> = cache.nodes.iter().map(|ni| ni.node.as_deref().is_some_and(|n| all_keys(node_labels(n)))).collect();
    for c in constraints.iter_mut() {
        let eligible = |ni: &NodeInfo| -> Option<String> {
            let node = ni.node.as_deref()?;
            if c.honor_affinity && !matches_node_selector(pod, node) {
                return None;
            }
            if c.honor_taints && untolerated_taint(pod, node).is_some() {
                return None;
            }
            node_labels(node).get(&c.key).cloned()
        };
        let matching = |p: &Pod| pod_is_counted_for_spread(p) && p.metadata.namespace.as_deref() == Some(ns) && c.selector.as_ref().is_some_and(|s| selector_matches(s, pod_labels(p)));
        let mut counts: HashMap<String, i64> = HashMap::new();
        // The index pays (a node lookup per candidate) when it leaves out most pods.
        let rarest = c.selector.as_ref().and_then(|s| rarest_pair(cache, &[ns], s)).filter(|(_, _, n)| use_index && n * 2 <= cache.pod_count());
        match rarest {
            Some((k, v, _)) => {
                // The domain of each eligible node, then the matching pods on those nodes.
                let mut domain_of: HashMap<&str, String> = HashMap::new();
                for (ni, ok) in cache.nodes.iter().zip(&keys_ok) {
                    if let Some(d) = ok.then(|| eligible(ni)).flatten() {
                        counts.entry(d.clone()).or_default();
                        domain_of.insert(ni.name.as_str(), d);
                    }
                }
                for (node, p) in cache.labelled(ns, k, v).into_iter().flat_map(|l| l.values()) {
                    if let Some(d) = domain_of.get(node.as_str()) {
                        if matching(p) {
                            *counts.entry(d.clone()).or_default() += 1;
                        }
                    }
                }
            }
            None => {
                for (ni, ok) in cache.nodes.iter().zip(&keys_ok) {
                    if let Some(d) = ok.then(|| eligible(ni)).flatten() {
                        let n = ni.pods.values().filter(|p| matching(p)).count() as i64;
                        *counts.entry(d).or_default() += n;
                    }
                }
            }
        }
        c.counts = counts;
    }
}

/// The pods `t` can select, from the cache's label index: those of its namespaces that carry
/// the rarest of its matchLabels pairs, as (node, pod). None when the index cannot narrow the
/// search (a namespaceSelector, or no matchLabels): then every pod is looked at.
fn candidates<'a>(cache: &'a Cache, t: &Term) -> Option<Vec<&'a (String, std::sync::Arc<Pod>)>> {
    if t.namespace_selector.is_some() {
        return None;
    }
    // A missing labelSelector selects nothing.
    let Some(sel) = t.selector.as_ref() else { return Some(Vec::new()) };
    let mut namespaces: Vec<&str> = t.namespaces.iter().map(String::as_str).collect();
    namespaces.sort_unstable();
    namespaces.dedup();
    let (k, v, _) = rarest_pair(cache, &namespaces, sel)?;
    Some(namespaces.iter().filter_map(|ns| cache.labelled(ns, k, v)).flat_map(|m| m.values()).collect())
}

/// The selector's matchLabels pair the fewest counted pods of `namespaces` carry, with that
/// number; None without matchLabels.
fn rarest_pair<'s>(cache: &Cache, namespaces: &[&str], sel: &'s LabelSelector) -> Option<(&'s str, &'s str, usize)> {
    let size = |k: &str, v: &str| namespaces.iter().map(|ns| cache.labelled(ns, k, v).map_or(0, |m| m.len())).sum::<usize>();
    sel.match_labels.iter().flatten().map(|(k, v)| (k.as_str(), v.as_str(), size(k, v))).min_by_key(|(_, _, n)| *n)
}

/// The inter-pod affinity counts of `prepare` from the label index; false (nothing counted)
/// when some term cannot use it.
fn count_indexed(cache: &Cache, p: &mut Prepared, preferred: &[Term]) -> bool {
    let first_affinity = match p.affinity.first() {
        Some(t) => match candidates(cache, t) {
            Some(c) => c,
            None => return false,
        },
        None => Vec::new(),
    };
    let mut anti = Vec::with_capacity(p.anti.len());
    for t in &p.anti {
        let Some(c) = candidates(cache, t) else { return false };
        anti.push(c);
    }
    let mut pref = Vec::with_capacity(preferred.len());
    for t in preferred {
        let Some(c) = candidates(cache, t) else { return false };
        pref.push(c);
    }
    let ns_labels = &cache.namespaces;
    let value = |node: &str, key: &str| cache.node(node).and_then(|ni| ni.node.as_deref()).and_then(|n| node_labels(n).get(key).cloned());
    for (node, existing) in first_affinity {
        if p.affinity.iter().all(|t| t.matches(existing, ns_labels)) {
            for t in &p.affinity {
                if let Some(v) = value(node, &t.topology_key) {
                    *p.affinity_counts.entry((t.topology_key.clone(), v)).or_default() += 1;
                }
            }
        }
    }
    for (t, cands) in p.anti.iter().zip(anti) {
        for (node, existing) in cands {
            if t.matches(existing, ns_labels) {
                if let Some(v) = value(node, &t.topology_key) {
                    *p.anti_counts.entry((t.topology_key.clone(), v)).or_default() += 1;
                }
            }
        }
    }
    for (t, cands) in preferred.iter().zip(pref) {
        for (node, existing) in cands {
            if t.matches(existing, ns_labels) {
                if let Some(v) = value(node, &t.topology_key) {
                    *p.preferred.entry((t.topology_key.clone(), v)).or_default() += t.weight;
                }
            }
        }
    }
    true
}

/// The PreFilter/PreScore state for `pod` over the cache; cheap when the pod has no
/// inter-pod constraints and no existing pod has required anti-affinity.
pub fn prepare(cache: &Cache, pod: &Pod) -> Prepared {
    prepare_with(cache, pod, true)
}

fn prepare_with(cache: &Cache, pod: &Pod, use_index: bool) -> Prepared {
    let mut p = Prepared { affinity: required_terms(pod, false), anti: required_terms(pod, true), hard: spread_constraints(pod, true), soft: spread_constraints(pod, false), ..Default::default() };
    let preferred = preferred_terms(pod);
    let ns_labels = &cache.namespaces;
    let node_value = |ni: &NodeInfo, key: &str| ni.node.as_deref().and_then(|n| node_labels(n).get(key).cloned());
    // Existing pods whose required anti-affinity selects the incoming pod.
    for (t, nodes) in cache.anti_affinity_terms() {
        if !t.matches(pod, ns_labels) {
            continue;
        }
        for (node, n) in nodes {
            if let Some(v) = cache.node(node).and_then(|ni| node_value(ni, &t.topology_key)) {
                *p.existing_anti.entry((t.topology_key.clone(), v)).or_default() += n;
            }
        }
    }
    let has_terms = !p.affinity.is_empty() || !p.anti.is_empty() || !preferred.is_empty();
    let indexed = has_terms && use_index && count_indexed(cache, &mut p, &preferred);
    if has_terms && !indexed {
        for ni in &cache.nodes {
            if ni.node.is_none() {
                continue;
            }
            for existing in ni.pods.values() {
                if !p.affinity.is_empty() && p.affinity.iter().all(|t| t.matches(existing, ns_labels)) {
                    for t in &p.affinity {
                        if let Some(v) = node_value(ni, &t.topology_key) {
                            *p.affinity_counts.entry((t.topology_key.clone(), v)).or_default() += 1;
                        }
                    }
                }
                for t in &p.anti {
                    if t.matches(existing, ns_labels) {
                        if let Some(v) = node_value(ni, &t.topology_key) {
                            *p.anti_counts.entry((t.topology_key.clone(), v)).or_default() += 1;
                        }
                    }
                }
                for t in &preferred {
                    if t.matches(existing, ns_labels) {
                        if let Some(v) = node_value(ni, &t.topology_key) {
                            *p.preferred.entry((t.topology_key.clone(), v)).or_default() += t.weight;
                        }
                    }
                }
            }
        }
    }
    if !p.affinity.is_empty() {
        p.self_affinity = p.affinity.iter().all(|t| t.matches(pod, ns_labels));
    }
    count_spread(&mut p.hard, pod, cache, use_index);
    count_spread(&mut p.soft, pod, cache, use_index);
    p
}

impl Prepared {
    /// PodTopologySpread then InterPodAffinity filters for one node.
    pub fn filter(&self, node: &Node) -> Result<(), Failure> {
        let labels = node_labels(node);
        for c in &self.hard {
            let Some(value) = labels.get(&c.key) else {
                return Err(Failure { reasons: vec![SPREAD_MISSING_LABEL.into()], unresolvable: true });
            };
            let mut min = c.counts.values().copied().min().unwrap_or(0);
            if c.min_domains.is_some_and(|m| (c.counts.len() as i64) < m) {
                min = 0;
            }
            let skew = c.counts.get(value).copied().unwrap_or(0) + i64::from(c.self_match) - min;
            if skew > c.max_skew {
                return Err(Failure { reasons: vec![SPREAD.into()], unresolvable: false });
            }
        }
        if !self.affinity.is_empty() {
            let mut exist = true;
            for t in &self.affinity {
                let Some(v) = labels.get(&t.topology_key) else {
                    return Err(Failure { reasons: vec![AFFINITY_RULES.into()], unresolvable: true });
                };
                if self.affinity_counts.get(&(t.topology_key.clone(), v.clone())).copied().unwrap_or(0) <= 0 {
                    exist = false;
                }
            }
            // The first of a group of pods with affinity to each other may go anywhere.
            let first_of_group = self.affinity_counts.is_empty() && self.self_affinity;
            if !exist && !first_of_group {
                return Err(Failure { reasons: vec![AFFINITY_RULES.into()], unresolvable: true });
            }
        }
        for t in &self.anti {
            if let Some(v) = labels.get(&t.topology_key) {
                if self.anti_counts.get(&(t.topology_key.clone(), v.clone())).copied().unwrap_or(0) > 0 {
                    return Err(Failure { reasons: vec![ANTI_AFFINITY_RULES.into()], unresolvable: false });
                }
            }
        }
        if !self.existing_anti.is_empty() {
            for (k, v) in labels {
                if self.existing_anti.get(&(k.clone(), v.clone())).copied().unwrap_or(0) > 0 {
                    return Err(Failure { reasons: vec![EXISTING_ANTI_AFFINITY.into()], unresolvable: false });
                }
            }
        }
        Ok(())
    }

    /// InterPodAffinity's normalized scores (preferred terms), 0..=100 per node; None when
    /// the pod has no preferred terms.
    pub fn affinity_scores(&self, nodes: &[&Node]) -> Option<Vec<i64>> {
        if self.preferred.is_empty() {
            return None;
        }
        let raw: Vec<i64> = nodes.iter().map(|n| node_labels(n).iter().map(|(k, v)| self.preferred.get(&(k.clone(), v.clone())).copied().unwrap_or(0)).sum()).collect();
        let (min, max) = (raw.iter().copied().min().unwrap_or(0), raw.iter().copied().max().unwrap_or(0));
        Some(raw.iter().map(|s| if max > min { 100 * (s - min) / (max - min) } else { 0 }).collect())
    }

    /// PodTopologySpread's normalized scores (ScheduleAnyway constraints): fewer matching pods
    /// in the node's domains score higher; nodes without the keys score 0. None without soft
    /// constraints.
    pub fn spread_scores(&self, nodes: &[&Node]) -> Option<Vec<i64>> {
        if self.soft.is_empty() {
            return None;
        }
        let raw: Vec<Option<f64>> = nodes
            .iter()
            .map(|n| {
                let labels = node_labels(n);
                let mut s = 0.0;
                for c in &self.soft {
                    let v = labels.get(&c.key)?;
                    let weight = ((c.counts.len() + 2) as f64).ln();
                    s += c.counts.get(v).copied().unwrap_or(0) as f64 * weight + (c.max_skew as f64 - 1.0);
                }
                Some(s)
            })
            .collect();
        let present: Vec<f64> = raw.iter().flatten().copied().collect();
        let min = present.iter().copied().fold(f64::INFINITY, f64::min);
        let max = present.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some(
            raw.iter()
                .map(|s| match s {
                    None => 0,
                    Some(_) if max <= 0.0 => 100,
                    Some(s) => (100.0 * (max + min - s) / max) as i64,
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn node(name: &str, zone: &str) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "topology.kubernetes.io/zone": zone}},
                "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}, "conditions": [{"type": "Ready", "status": "True"}]}}))
            .expect("node"),
        )
    }

    fn pod(name: &str, ns: &str, labels: serde_json::Value, spec: serde_json::Value) -> Pod {
        let mut s = json!({"containers": [{"name": "c", "image": "x"}]});
        for (k, v) in spec.as_object().cloned().unwrap_or_default() {
            s[k] = v;
        }
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns, "uid": name, "labels": labels}, "spec": s})).expect("pod")
    }

    fn cluster() -> Cache {
        let mut c = Cache::default();
        for (n, z) in [("a", "z1"), ("b", "z1"), ("c", "z2")] {
            c.upsert_node(node(n, z));
        }
        c
    }

    fn place(c: &mut Cache, p: Pod, node: &str) {
        let mut p = p;
        p.spec.as_mut().expect("spec").node_name = Some(node.into());
        c.update_pod(Arc::new(p));
    }

    fn verdicts(c: &Cache, p: &Pod) -> Vec<(String, Option<String>)> {
        let prep = prepare(c, p);
        ["a", "b", "c"].iter().map(|n| (n.to_string(), prep.filter(c.node(n).and_then(|i| i.node.as_deref()).expect("node")).err().map(|f| f.reasons[0].clone()))).collect()
    }

    fn anti(app: &str, key: &str) -> serde_json::Value {
        json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": key}]}}})
    }

    #[test]
    fn the_label_index_counts_what_a_walk_over_every_pod_counts() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut c = cluster();
        let apps = ["a", "b", "c"];
        let nss = ["d", "e"];
        let mut any_existing = false;
        for round in 0..400 {
            let name = format!("p{}", rng.random_range(0..120));
            let ns = nss[rng.random_range(0..2)];
            match rng.random_range(0..10) {
                // Deletions, label changes (the same pod again) and moves, as well as new pods.
                0 => {
                    c.delete_pod(&format!("{ns}/{name}"));
                }
                _ => {
                    let labels = json!({"app": apps[rng.random_range(0..3)], "tier": format!("t{}", rng.random_range(0..2))});
                    let node = ["a", "b", "c", "gone"][rng.random_range(0..4)];
                    // Some existing pods repel pods of an app, some twice with the same term.
                    let spec = match rng.random_range(0..4) {
                        0 => anti(apps[rng.random_range(0..3)], "kubernetes.io/hostname"),
                        1 => {
                            let t = json!({"labelSelector": {"matchLabels": {"app": apps[rng.random_range(0..3)]}}, "topologyKey": "topology.kubernetes.io/zone"});
                            json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [t.clone(), t]}}})
                        }
                        _ => json!({}),
                    };
                    let mut p = pod(&name, ns, labels, spec);
                    p.metadata.uid = Some(format!("u{name}"));
                    place(&mut c, p, node);
                }
            }
            if round % 20 != 0 {
                continue;
            }
            for app in apps {
                let term = |key: &str, labels: serde_json::Value| json!({"labelSelector": {"matchLabels": labels}, "topologyKey": key, "namespaces": ["d", "e", "d"]});
                let spec = json!({"topologySpreadConstraints": [
                    {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": app, "tier": "t0"}}},
                    {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": {"app": app}}}],
                    "affinity": {
                    "podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("topology.kubernetes.io/zone", json!({"app": app}))],
                        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 3, "podAffinityTerm": term("kubernetes.io/hostname", json!({"tier": "t1"}))}]},
                    "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("kubernetes.io/hostname", json!({"app": app, "tier": "t0"}))]}}});
                let incoming = pod("new", "d", json!({"app": app}), spec);
                let (fast, walk) = (prepare_with(&c, &incoming, true), prepare_with(&c, &incoming, false));
                assert_eq!(fast.affinity_counts, walk.affinity_counts, "round {round}");
                assert_eq!(fast.anti_counts, walk.anti_counts, "round {round}");
                assert_eq!(fast.preferred, walk.preferred, "round {round}");
                // Existing pods' anti-affinity, counted pod by pod.
                let mut existing: HashMap<Pair, i64> = HashMap::new();
                for ni in &c.nodes {
                    for e in ni.pods.values() {
                        for t in required_terms(e, true) {
                            let v = ni.node.as_deref().and_then(|n| node_labels(n).get(&t.topology_key).cloned());
                            if let (true, Some(v)) = (t.matches(&incoming, &c.namespaces), v) {
                                *existing.entry((t.topology_key.clone(), v)).or_default() += 1;
                            }
                        }
                    }
                }
                assert_eq!(fast.existing_anti, existing, "round {round}");
                any_existing |= !existing.is_empty();
                let spread = |p: &Prepared| p.hard.iter().chain(&p.soft).map(|c| c.counts.clone()).collect::<Vec<_>>();
                assert_eq!(spread(&fast), spread(&walk), "round {round}");
                assert_eq!(spread(&walk)[1].len(), 3, "every eligible node is a domain, pods or not");
                assert!(!walk.anti_counts.is_empty() || round < 40, "the comparison counts something");
            }
        }
        assert!(any_existing, "the comparison counts existing anti-affinity");
    }

    #[test]
    fn selectors_match_labels_and_expressions() {
        let l: Labels = [("app".to_string(), "web".to_string()), ("tier".to_string(), "1".to_string())].into();
        let sel = |v: serde_json::Value| serde_json::from_value::<LabelSelector>(v).expect("selector");
        assert!(selector_matches(&sel(json!({})), &l));
        assert!(selector_matches(&sel(json!({"matchLabels": {"app": "web"}})), &l));
        assert!(!selector_matches(&sel(json!({"matchLabels": {"app": "db"}})), &l));
        assert!(selector_matches(&sel(json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "db"]}]})), &l));
        assert!(!selector_matches(&sel(json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]})), &l));
        assert!(selector_matches(&sel(json!({"matchExpressions": [{"key": "x", "operator": "DoesNotExist"}]})), &l));
        assert!(!selector_matches(&sel(json!({"matchExpressions": [{"key": "x", "operator": "Exists"}]})), &l));
    }

    #[test]
    fn required_anti_affinity_keeps_replicas_apart_per_host_and_per_zone() {
        let mut c = cluster();
        place(&mut c, pod("w1", "d", json!({"app": "web"}), anti("web", "kubernetes.io/hostname")), "a");
        let p = pod("w2", "d", json!({"app": "web"}), anti("web", "kubernetes.io/hostname"));
        let v = verdicts(&c, &p);
        // The incoming pod's own rule, checked before the existing pod's.
        assert_eq!(v[0].1.as_deref(), Some(ANTI_AFFINITY_RULES));
        assert_eq!(v[1].1, None);
        assert_eq!(v[2].1, None);
        let p = pod("w2", "d", json!({"app": "web"}), anti("web", "topology.kubernetes.io/zone"));
        let v = verdicts(&c, &p);
        assert_eq!(v[1].1.as_deref(), Some(ANTI_AFFINITY_RULES));
        assert_eq!(v[2].1, None);
        // Another namespace is not selected by default.
        let p = pod("w2", "other", json!({"app": "web"}), anti("web", "kubernetes.io/hostname"));
        assert!(verdicts(&c, &p).iter().all(|(_, r)| r.is_none()));
    }

    #[test]
    fn existing_pods_anti_affinity_is_symmetric() {
        let mut c = cluster();
        place(&mut c, pod("db", "d", json!({"app": "db"}), anti("web", "topology.kubernetes.io/zone")), "c");
        let p = pod("w", "d", json!({"app": "web"}), json!({}));
        let v = verdicts(&c, &p);
        assert_eq!(v[2].1.as_deref(), Some(EXISTING_ANTI_AFFINITY));
        assert_eq!(v[0].1, None);
    }

    #[test]
    fn required_affinity_needs_a_matching_pod_in_the_domain_except_for_the_first_of_a_group() {
        let mut c = cluster();
        let aff = json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "topology.kubernetes.io/zone"}]}}});
        // Nothing matches anywhere and the pod does not match itself: nowhere.
        let p = pod("w", "d", json!({"app": "web"}), aff.clone());
        assert!(verdicts(&c, &p).iter().all(|(_, r)| r.as_deref() == Some(AFFINITY_RULES)));
        // The first pod of a self-affine group goes anywhere.
        let first = pod("c0", "d", json!({"app": "cache"}), aff.clone());
        assert!(verdicts(&c, &first).iter().all(|(_, r)| r.is_none()));
        place(&mut c, pod("c1", "d", json!({"app": "cache"}), json!({})), "b");
        let v = verdicts(&c, &p);
        assert_eq!(v[0].1, None, "same zone as b");
        assert_eq!(v[1].1, None);
        assert_eq!(v[2].1.as_deref(), Some(AFFINITY_RULES));
    }

    #[test]
    fn namespace_selector_selects_by_namespace_labels() {
        let mut c = cluster();
        c.namespaces.insert("prod".into(), [("env".to_string(), "prod".to_string())].into());
        place(&mut c, pod("x", "prod", json!({"app": "web"}), json!({})), "a");
        let spec = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": "web"}}, "namespaceSelector": {"matchLabels": {"env": "prod"}}, "topologyKey": "kubernetes.io/hostname"}]}}});
        let v = verdicts(&c, &pod("y", "d", json!({}), spec));
        assert_eq!(v[0].1.as_deref(), Some(ANTI_AFFINITY_RULES));
    }

    fn spread(key: &str, skew: i32, extra: serde_json::Value) -> serde_json::Value {
        let mut c = json!({"maxSkew": skew, "topologyKey": key, "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}});
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            c[k] = v;
        }
        json!({"topologySpreadConstraints": [c]})
    }

    #[test]
    fn topology_spread_limits_the_skew_between_zones() {
        let mut c = cluster();
        place(&mut c, pod("w1", "d", json!({"app": "web"}), json!({})), "a");
        let p = pod("w2", "d", json!({"app": "web"}), spread("topology.kubernetes.io/zone", 1, json!({})));
        let v = verdicts(&c, &p);
        // z1 has 1, z2 has 0: another in z1 makes the skew 2.
        assert_eq!(v[0].1.as_deref(), Some(SPREAD));
        assert_eq!(v[1].1.as_deref(), Some(SPREAD));
        assert_eq!(v[2].1, None);
        let p = pod("w2", "d", json!({"app": "web"}), spread("topology.kubernetes.io/zone", 2, json!({})));
        assert!(verdicts(&c, &p).iter().all(|(_, r)| r.is_none()));
        // Pods of other namespaces do not count.
        let p = pod("w2", "other", json!({"app": "web"}), spread("topology.kubernetes.io/zone", 1, json!({})));
        assert!(verdicts(&c, &p).iter().all(|(_, r)| r.is_none()));
    }

    #[test]
    fn topology_spread_min_domains_and_missing_labels() {
        let mut c = cluster();
        place(&mut c, pod("w1", "d", json!({"app": "web"}), json!({})), "c");
        place(&mut c, pod("w2", "d", json!({"app": "web"}), json!({})), "a");
        // Two zones with one pod each: the global minimum is 1; with minDomains 3 it is 0.
        let p = pod("w3", "d", json!({"app": "web"}), spread("topology.kubernetes.io/zone", 1, json!({})));
        assert!(verdicts(&c, &p).iter().all(|(_, r)| r.is_none()));
        let p = pod("w3", "d", json!({"app": "web"}), spread("topology.kubernetes.io/zone", 1, json!({"minDomains": 3})));
        assert!(verdicts(&c, &p).iter().all(|(_, r)| r.as_deref() == Some(SPREAD)));
        let p = pod("w3", "d", json!({"app": "web"}), spread("rack", 1, json!({})));
        assert!(verdicts(&c, &p).iter().all(|(_, r)| r.as_deref() == Some(SPREAD_MISSING_LABEL)));
    }

    #[test]
    fn topology_spread_honors_node_affinity_by_default() {
        let mut c = cluster();
        place(&mut c, pod("w1", "d", json!({"app": "web"}), json!({})), "c");
        // Only z2 is eligible with the selector: it has 1, the minimum is 1, skew stays 1.
        let mut spec = spread("topology.kubernetes.io/zone", 1, json!({}));
        spec["nodeSelector"] = json!({"topology.kubernetes.io/zone": "z2"});
        let prep = prepare(&c, &pod("w2", "d", json!({"app": "web"}), spec.clone()));
        assert!(prep.filter(c.node("c").and_then(|i| i.node.as_deref()).expect("c")).is_ok());
        spec["topologySpreadConstraints"][0]["nodeAffinityPolicy"] = json!("Ignore");
        let prep = prepare(&c, &pod("w2", "d", json!({"app": "web"}), spec));
        assert!(prep.filter(c.node("c").and_then(|i| i.node.as_deref()).expect("c")).is_err());
    }

    #[test]
    fn preferred_terms_score_by_weight() {
        let mut c = cluster();
        place(&mut c, pod("x", "d", json!({"app": "cache"}), json!({})), "a");
        let spec = json!({"affinity": {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 10, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "kubernetes.io/hostname"}}]}}});
        let prep = prepare(&c, &pod("w", "d", json!({}), spec));
        let nodes: Vec<&Node> = ["a", "b", "c"].iter().filter_map(|n| c.node(n).and_then(|i| i.node.as_deref())).collect();
        assert_eq!(prep.affinity_scores(&nodes), Some(vec![100, 0, 0]));
        let spec = json!({"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 10, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "topology.kubernetes.io/zone"}}]}}});
        let prep = prepare(&c, &pod("w", "d", json!({}), spec));
        assert_eq!(prep.affinity_scores(&nodes), Some(vec![0, 0, 100]));
    }

    #[test]
    fn schedule_anyway_spread_prefers_the_emptier_domain() {
        let mut c = cluster();
        place(&mut c, pod("w1", "d", json!({"app": "web"}), json!({})), "a");
        let mut spec = spread("topology.kubernetes.io/zone", 1, json!({}));
        spec["topologySpreadConstraints"][0]["whenUnsatisfiable"] = json!("ScheduleAnyway");
        let prep = prepare(&c, &pod("w2", "d", json!({"app": "web"}), spec));
        let nodes: Vec<&Node> = ["a", "b", "c"].iter().filter_map(|n| c.node(n).and_then(|i| i.node.as_deref())).collect();
        let s = prep.spread_scores(&nodes).expect("scores");
        assert!(s[2] > s[0] && s[0] == s[1], "{s:?}");
        assert!(prep.filter(nodes[0]).is_ok(), "ScheduleAnyway never filters");
    }
}
