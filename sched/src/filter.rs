//! Filtering and scoring of nodes for one pod: pure functions over k8s-openapi objects, in the
//! order and with the wording of upstream kube-scheduler's default plugins (NodeUnschedulable,
//! TaintToleration, NodeAffinity, NodePorts, NodeResourcesFit, LeastAllocated scoring).

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Container, Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, Taint, Toleration};

use crate::quantity::parse_milli;

/// Resource amounts in milli-units by resource name. The four every pod and node has are
/// fields (the scheduler compares them for every node it looks at, so no string lookups);
/// the rest (extended resources, hugepages) are a short list sorted by name. A resource not
/// present is 0.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu: i128,
    pub memory: i128,
    pub ephemeral_storage: i128,
    pub pods: i128,
    other: Vec<(String, i128)>,
}

impl Resources {
    pub fn new() -> Resources {
        Resources::default()
    }

    pub fn get(&self, name: &str) -> i128 {
        match name {
            "cpu" => self.cpu,
            "memory" => self.memory,
            "ephemeral-storage" => self.ephemeral_storage,
            "pods" => self.pods,
            _ => self.other.binary_search_by(|(k, _)| k.as_str().cmp(name)).map(|i| self.other[i].1).unwrap_or(0),
        }
    }

    fn slot(&mut self, name: &str) -> &mut i128 {
        match name {
            "cpu" => &mut self.cpu,
            "memory" => &mut self.memory,
            "ephemeral-storage" => &mut self.ephemeral_storage,
            "pods" => &mut self.pods,
            _ => {
                let i = match self.other.binary_search_by(|(k, _)| k.as_str().cmp(name)) {
                    Ok(i) => i,
                    Err(i) => {
                        self.other.insert(i, (name.to_string(), 0));
                        i
                    }
                };
                &mut self.other[i].1
            }
        }
    }

    pub fn set(&mut self, name: &str, v: i128) {
        *self.slot(name) = v;
    }

    pub fn add(&mut self, name: &str, v: i128) {
        *self.slot(name) += v;
    }

    /// The non-zero amounts: cpu, memory, ephemeral-storage, pods, then the others by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, i128)> {
        [("cpu", self.cpu), ("memory", self.memory), ("ephemeral-storage", self.ephemeral_storage), ("pods", self.pods)]
            .into_iter()
            .chain(self.other.iter().map(|(k, v)| (k.as_str(), *v)))
            .filter(|(_, v)| *v != 0)
    }

    /// Adds `sign` (1 or -1) times every amount of `b`.
    fn add_all_times(&mut self, b: &Resources, sign: i128) {
        self.cpu += sign * b.cpu;
        self.memory += sign * b.memory;
        self.ephemeral_storage += sign * b.ephemeral_storage;
        self.pods += sign * b.pods;
        for (k, v) in &b.other {
            self.add(k, sign * *v);
        }
    }

    fn add_all(&mut self, b: &Resources) {
        self.add_all_times(b, 1);
    }

    fn max_all(&mut self, b: &Resources) {
        for (k, v) in b.iter() {
            let e = self.slot(k);
            *e = (*e).max(v);
        }
    }

    /// Whether every amount asked for (pods aside, which count separately) is at most what
    /// `alloc` leaves beyond `used`.
    fn fits(&self, alloc: &Resources, used: &Resources) -> bool {
        let ok = |want: i128, a: i128, u: i128| want <= 0 || want <= a - u;
        ok(self.cpu, alloc.cpu, used.cpu)
            && ok(self.memory, alloc.memory, used.memory)
            && ok(self.ephemeral_storage, alloc.ephemeral_storage, used.ephemeral_storage)
            && self.other.iter().all(|(k, v)| ok(*v, alloc.get(k), used.get(k)))
    }
}

/// Why one node does not fit. `unresolvable`: preemption cannot help (upstream's
/// UnschedulableAndUnresolvable), which decides the preemption part of the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub reasons: Vec<String>,
    pub unresolvable: bool,
}

impl Failure {
    fn unresolvable(reason: impl Into<String>) -> Failure {
        Failure { reasons: vec![reason.into()], unresolvable: true }
    }
}

pub const NOT_READY: &str = "node(s) were not ready";
pub const UNSCHEDULABLE: &str = "node(s) were unschedulable";
pub const AFFINITY: &str = "node(s) didn't match Pod's node affinity/selector";
pub const PORTS: &str = "node(s) didn't have free ports for the requested pod ports";
pub const TOO_MANY_PODS: &str = "Too many pods";

/// What is already on a node: the pods bound to it and the ones this scheduler assumed there.
#[derive(Clone, Debug, Default)]
pub struct NodeUsage {
    pub requested: Resources,
    /// cpu/memory with upstream's defaults for containers without requests, for scoring.
    pub nonzero: Resources,
    pub pods: i64,
    pub ports: Vec<HostPort>,
}

impl NodeUsage {
    pub fn add(&mut self, pod: &Pod) {
        self.add_info(&PodInfo::of(pod));
    }

    pub fn add_info(&mut self, p: &PodInfo) {
        self.requested.add_all(&p.requests);
        self.nonzero.add_all(&p.nonzero);
        self.pods += 1;
        self.ports.extend(p.ports.iter().cloned());
    }

    /// Undoes `add_info` of the same PodInfo.
    pub fn remove_info(&mut self, p: &PodInfo) {
        self.requested.add_all_times(&p.requests, -1);
        self.nonzero.add_all_times(&p.nonzero, -1);
        self.pods -= 1;
        for port in &p.ports {
            if let Some(i) = self.ports.iter().position(|u| u == port) {
                self.ports.swap_remove(i);
            }
        }
    }
}

/// What the resource filters and scores need of a pod, computed once per pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub requests: Resources,
    pub nonzero: Resources,
    pub ports: Vec<HostPort>,
}

impl PodInfo {
    pub fn of(pod: &Pod) -> PodInfo {
        PodInfo { requests: pod_requests(pod), nonzero: nonzero_requests(pod), ports: host_ports(pod) }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub ip: String,
    pub protocol: String,
    pub port: i32,
}

impl HostPort {
    fn conflicts(&self, other: &HostPort) -> bool {
        let any = |ip: &str| ip.is_empty() || ip == "0.0.0.0";
        self.port == other.port && self.protocol == other.protocol && (self.ip == other.ip || any(&self.ip) || any(&other.ip))
    }
}

/// Host ports the pod's containers ask for.
pub fn host_ports(pod: &Pod) -> Vec<HostPort> {
    let Some(spec) = &pod.spec else { return vec![] };
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|hp| *hp > 0)?;
            Some(HostPort {
                ip: p.host_ip.clone().unwrap_or_else(|| "0.0.0.0".into()),
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                port,
            })
        })
        .collect()
}

fn container_requests(c: &Container) -> Resources {
    let mut out = Resources::new();
    let Some(r) = &c.resources else { return out };
    // A limit without a request stands for the request (API defaulting does the same).
    for (k, q) in r.limits.iter().flatten() {
        out.set(k, parse_milli(&q.0).unwrap_or(0));
    }
    for (k, q) in r.requests.iter().flatten() {
        out.set(k, parse_milli(&q.0).unwrap_or(0));
    }
    out
}

/// The pod's effective requests, as upstream computes them: app containers plus sidecars
/// (restartable init containers), at least each regular init container with the sidecars
/// started before it, plus the pod overhead.
pub fn pod_requests(pod: &Pod) -> Resources {
    let mut total = Resources::new();
    let Some(spec) = &pod.spec else { return total };
    for c in &spec.containers {
        total.add_all(&container_requests(c));
    }
    let mut sidecars = Resources::new();
    let mut init_max = Resources::new();
    for c in spec.init_containers.iter().flatten() {
        let r = container_requests(c);
        if c.restart_policy.as_deref() == Some("Always") {
            sidecars.add_all(&r);
            init_max.max_all(&sidecars);
        } else {
            let mut with = sidecars.clone();
            with.add_all(&r);
            init_max.max_all(&with);
        }
    }
    total.add_all(&sidecars);
    total.max_all(&init_max);
    for (k, q) in spec.overhead.iter().flatten() {
        total.add(k, parse_milli(&q.0).unwrap_or(0));
    }
    total.other.retain(|(_, v)| *v != 0);
    total
}

/// Upstream's non-zero defaults for scoring: 100m cpu and 200Mi memory per container that
/// requests none, so that pods without requests still spread.
pub fn nonzero_requests(pod: &Pod) -> Resources {
    let mut out = Resources::new();
    let Some(spec) = &pod.spec else { return out };
    for c in &spec.containers {
        let r = container_requests(c);
        out.cpu += if r.cpu > 0 { r.cpu } else { 100 };
        out.memory += if r.memory > 0 { r.memory } else { 200 * 1024 * 1024 * 1000 };
    }
    out
}

pub fn node_allocatable(node: &Node) -> Resources {
    let mut out = Resources::new();
    let status = node.status.as_ref();
    let alloc = status.and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()));
    for (k, q) in alloc.into_iter().flatten() {
        out.set(k, parse_milli(&q.0).unwrap_or(0));
    }
    out
}

pub fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// client-go's Toleration.ToleratesTaint.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = t.effect.as_deref().filter(|e| !e.is_empty()) {
        if effect != taint.effect {
            return false;
        }
    }
    let key = t.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        _ => false,
    }
}

fn tolerations(pod: &Pod) -> &[Toleration] {
    pod.spec.as_ref().and_then(|s| s.tolerations.as_deref()).unwrap_or(&[])
}

/// The first NoSchedule/NoExecute taint of the node that the pod does not tolerate.
pub fn untolerated_taint<'a>(pod: &Pod, node: &'a Node) -> Option<&'a Taint> {
    let taints = node.spec.as_ref().and_then(|s| s.taints.as_deref()).unwrap_or(&[]);
    let tols = tolerations(pod);
    taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .find(|taint| !tols.iter().any(|t| tolerates(t, taint)))
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or(&[]);
    let int = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(have), [want]) = (value.and_then(int), values) else { return false };
            let Some(want) = int(want) else { return false };
            if r.operator == "Gt" {
                have > want
            } else {
                have < want
            }
        }
        _ => false,
    }
}

fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or(&[]);
    let fields = term.match_fields.as_deref().unwrap_or(&[]);
    // An empty term matches no node (upstream).
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = node.metadata.labels.as_ref();
    exprs.iter().all(|r| requirement_matches(r, labels.and_then(|l| l.get(&r.key)).map(String::as_str)))
        && fields.iter().all(|r| r.key == "metadata.name" && requirement_matches(r, node.metadata.name.as_deref()))
}

/// Whether the node matches any term of the selector (a PersistentVolume's node affinity).
pub fn node_selector_matches(sel: &k8s_openapi::api::core::v1::NodeSelector, node: &Node) -> bool {
    sel.node_selector_terms.iter().any(|t| term_matches(t, node))
}

/// nodeSelector and required node affinity.
pub fn matches_node_selector(pod: &Pod, node: &Node) -> bool {
    let Some(spec) = &pod.spec else { return true };
    let labels = node.metadata.labels.as_ref();
    for (k, v) in spec.node_selector.iter().flatten() {
        if labels.and_then(|l| l.get(k)) != Some(v) {
            return false;
        }
    }
    let required = spec.affinity.as_ref().and_then(|a| a.node_affinity.as_ref()).and_then(|na| na.required_during_scheduling_ignored_during_execution.as_ref());
    match required {
        Some(sel) => sel.node_selector_terms.iter().any(|t| term_matches(t, node)),
        None => true,
    }
}

fn resource_reasons(pod_req: &Resources, alloc: &Resources, usage: &NodeUsage) -> Vec<String> {
    let alloc_pods = alloc.pods / 1000;
    // The common case without allocations: everything fits.
    if (usage.pods as i128) < alloc_pods && pod_req.fits(alloc, &usage.requested) {
        return Vec::new();
    }
    let mut reasons = Vec::new();
    if usage.pods as i128 + 1 > alloc_pods {
        reasons.push(TOO_MANY_PODS.to_string());
    }
    // cpu, memory, ephemeral-storage first, then other (extended) resources by name, as
    // upstream (the order `iter` yields them in).
    for (name, want) in pod_req.iter() {
        if name != "pods" && want > 0 && want > alloc.get(name) - usage.requested.get(name) {
            reasons.push(format!("Insufficient {name}"));
        }
    }
    reasons
}

/// Runs the filters in upstream's plugin order; the first failing one decides the node's reasons.
pub fn filter(pod: &Pod, node: &Node, usage: &NodeUsage) -> Result<(), Failure> {
    filter_node(pod, &PodInfo::of(pod), node, &node_allocatable(node), node_ready(node), usage)
}

/// `filter` with the pod's and node's derived values computed by the caller (once per pod and
/// once per node update, not once per pair).
pub fn filter_node(pod: &Pod, info: &PodInfo, node: &Node, alloc: &Resources, ready: bool, usage: &NodeUsage) -> Result<(), Failure> {
    if !ready {
        return Err(Failure::unresolvable(NOT_READY));
    }
    if node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false) {
        let taint = Taint { key: "node.kubernetes.io/unschedulable".into(), effect: "NoSchedule".into(), ..Default::default() };
        if !tolerations(pod).iter().any(|t| tolerates(t, &taint)) {
            return Err(Failure::unresolvable(UNSCHEDULABLE));
        }
    }
    if let Some(t) = untolerated_taint(pod, node) {
        return Err(Failure::unresolvable(format!("node(s) had untolerated taint {{{}: {}}}", t.key, t.value.as_deref().unwrap_or(""))));
    }
    if !matches_node_selector(pod, node) {
        return Err(Failure::unresolvable(AFFINITY));
    }
    if info.ports.iter().any(|w| usage.ports.iter().any(|u| u.conflicts(w))) {
        return Err(Failure { reasons: vec![PORTS.into()], unresolvable: false });
    }
    let reasons = resource_reasons(&info.requests, alloc, usage);
    if !reasons.is_empty() {
        return Err(Failure { reasons, unresolvable: false });
    }
    Ok(())
}

/// LeastAllocated over cpu and memory (equal weights), 0..=100, counting the incoming pod.
pub fn score(pod: &Pod, node: &Node, usage: &NodeUsage) -> i64 {
    least_allocated(&PodInfo::of(pod), &node_allocatable(node), usage)
}

/// NodeResourcesFit's LeastAllocated strategy over cpu and memory (weight 1 each), with the
/// non-zero defaults for containers without requests, counting the incoming pod: 0..=100.
pub fn least_allocated(info: &PodInfo, alloc: &Resources, usage: &NodeUsage) -> i64 {
    let one = |cap: i128, req: i128| -> i128 {
        if cap <= 0 || req > cap {
            0
        } else {
            (cap - req) * 100 / cap
        }
    };
    let cpu = one(alloc.cpu, usage.nonzero.cpu + info.nonzero.cpu);
    let memory = one(alloc.memory, usage.nonzero.memory + info.nonzero.memory);
    ((cpu + memory) / 2) as i64
}

/// NodeResourcesBalancedAllocation: 100 * (1 - the standard deviation of the cpu and memory
/// fractions requested, the incoming pod included); nodes whose use stays balanced score high.
pub fn balanced_allocation(info: &PodInfo, alloc: &Resources, usage: &NodeUsage) -> i64 {
    let fraction = |cap: i128, req: i128| (cap > 0).then(|| (req as f64 / cap as f64).min(1.0));
    let cpu = fraction(alloc.cpu, usage.requested.cpu + info.requests.cpu);
    let memory = fraction(alloc.memory, usage.requested.memory + info.requests.memory);
    let std = match (cpu, memory) {
        (Some(a), Some(b)) => (a - b).abs() / 2.0,
        _ => 0.0,
    };
    ((1.0 - std) * 100.0) as i64
}

/// NodeAffinity's raw score: the summed weights of the preferred terms the node matches.
pub fn preferred_node_affinity(pod: &Pod, node: &Node) -> i64 {
    let preferred = pod.spec.as_ref().and_then(|s| s.affinity.as_ref()).and_then(|a| a.node_affinity.as_ref()).and_then(|na| na.preferred_during_scheduling_ignored_during_execution.as_deref());
    preferred.unwrap_or(&[]).iter().filter(|t| t.weight != 0 && term_matches(&t.preference, node)).map(|t| t.weight as i64).sum()
}

/// TaintToleration's raw score: how many PreferNoSchedule taints of the node the pod does not
/// tolerate (fewer is better; normalized in reverse).
pub fn intolerable_prefer_no_schedule(pod: &Pod, node: &Node) -> i64 {
    let taints = node.spec.as_ref().and_then(|s| s.taints.as_deref()).unwrap_or(&[]);
    let tols = || tolerations(pod).iter().filter(|t| t.effect.as_deref().is_none_or(|e| e.is_empty() || e == "PreferNoSchedule"));
    taints.iter().filter(|t| t.effect == "PreferNoSchedule" && !tols().any(|tol| tolerates(tol, t))).count() as i64
}

/// upstream's DefaultNormalizeScore: scales to 0..=100 by the highest score; `reverse` turns
/// it around (100 - scaled). All zero: 0, or 100 when reversed.
pub fn normalize(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    for s in scores.iter_mut() {
        if max == 0 {
            *s = if reverse { 100 } else { 0 };
            continue;
        }
        let v = 100 * *s / max;
        *s = if reverse { 100 - v } else { v };
    }
}

/// Weights of upstream's default profile for the scores kuberaft computes.
pub const WEIGHT_LEAST_ALLOCATED: i64 = 1;
pub const WEIGHT_BALANCED_ALLOCATION: i64 = 1;
pub const WEIGHT_NODE_AFFINITY: i64 = 2;
pub const WEIGHT_TAINT_TOLERATION: i64 = 3;
pub const WEIGHT_INTER_POD_AFFINITY: i64 = 2;
pub const WEIGHT_TOPOLOGY_SPREAD: i64 = 2;

/// upstream's FitError message: a sorted histogram of the reasons, then what preemption found
/// (kuberaft does not preempt: nodes where it could help report no victims).
pub fn fit_error_message(num_nodes: usize, failures: &[Failure]) -> String {
    if num_nodes == 0 {
        return "no nodes available to schedule pods".into();
    }
    fit_error_with(num_nodes, failures, None)
}

/// The FitError message when PreFilter rejected the pod as a whole (`msg` for every node).
pub fn fit_error_prefilter(num_nodes: usize, msg: &str) -> String {
    if num_nodes == 0 {
        return "no nodes available to schedule pods".into();
    }
    format!("0/{num_nodes} nodes are available: {msg}. preemption: 0/{num_nodes} nodes are available: {num_nodes} Preemption is not helpful for scheduling.")
}

/// The FitError message with `preemption` as its second part (Some("") for none: preemption
/// found victims), or the histogram of what preemption found per node (None).
pub fn fit_error_with(num_nodes: usize, failures: &[Failure], preemption_msg: Option<&str>) -> String {
    if num_nodes == 0 {
        return "no nodes available to schedule pods".into();
    }
    let histogram = |counts: HashMap<&str, usize>| {
        let mut parts: Vec<String> = counts.into_iter().map(|(r, n)| format!("{n} {r}")).collect();
        parts.sort();
        parts.join(", ")
    };
    let mut reasons: HashMap<&str, usize> = HashMap::new();
    let mut preemption: HashMap<&str, usize> = HashMap::new();
    for f in failures {
        for r in &f.reasons {
            *reasons.entry(r.as_str()).or_default() += 1;
        }
        let p = if f.unresolvable { "Preemption is not helpful for scheduling" } else { "No preemption victims found for incoming pod" };
        *preemption.entry(p).or_default() += 1;
    }
    match preemption_msg {
        Some("") => format!("0/{num_nodes} nodes are available: {}.", histogram(reasons)),
        Some(p) => format!("0/{num_nodes} nodes are available: {}. preemption: {p}", histogram(reasons)),
        None => format!("0/{num_nodes} nodes are available: {}. preemption: 0/{num_nodes} nodes are available: {}.", histogram(reasons), histogram(preemption)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(v: serde_json::Value) -> Node {
        let mut base = json!({
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"},
            "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "10"},
                       "conditions": [{"type": "Ready", "status": "True"}]}
        });
        merge(&mut base, v);
        serde_json::from_value(base).expect("node")
    }

    fn pod(v: serde_json::Value) -> Pod {
        let mut base = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "x"}]}});
        merge(&mut base, v);
        serde_json::from_value(base).expect("pod")
    }

    fn with_requests(cpu: &str, mem: &str) -> Pod {
        pod(json!({"spec": {"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": cpu, "memory": mem}}}]}}))
    }

    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    fn reasons(p: &Pod, n: &Node) -> Vec<String> {
        filter(p, n, &NodeUsage::default()).err().map(|f| f.reasons).unwrap_or_default()
    }

    #[test]
    fn ready_node_with_room_fits() {
        assert_eq!(filter(&with_requests("1", "1Gi"), &node(json!({})), &NodeUsage::default()), Ok(()));
    }

    #[test]
    fn node_without_conditions_is_not_ready() {
        let n = node(json!({"status": {"conditions": null}}));
        assert_eq!(reasons(&pod(json!({})), &n), vec![NOT_READY]);
        let n = node(json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}));
        assert_eq!(reasons(&pod(json!({})), &n), vec![NOT_READY]);
    }

    #[test]
    fn unschedulable_node_is_skipped_unless_tolerated() {
        let n = node(json!({"spec": {"unschedulable": true}}));
        assert_eq!(reasons(&pod(json!({})), &n), vec![UNSCHEDULABLE]);
        let p = pod(json!({"spec": {"tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}]}}));
        assert!(reasons(&p, &n).is_empty());
    }

    #[test]
    fn untolerated_noschedule_and_noexecute_taints_reject_but_prefer_noschedule_does_not() {
        let n = node(json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}));
        assert_eq!(reasons(&pod(json!({})), &n), vec!["node(s) had untolerated taint {dedicated: gpu}"]);
        let n = node(json!({"spec": {"taints": [{"key": "k", "effect": "NoExecute"}]}}));
        assert_eq!(reasons(&pod(json!({})), &n), vec!["node(s) had untolerated taint {k: }"]);
        let n = node(json!({"spec": {"taints": [{"key": "k", "effect": "PreferNoSchedule"}]}}));
        assert!(reasons(&pod(json!({})), &n).is_empty());
    }

    #[test]
    fn tolerations_match_by_equal_exists_and_empty_key_exists() {
        let n = node(json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}));
        let ok = |tol: serde_json::Value| reasons(&pod(json!({"spec": {"tolerations": [tol]}})), &n).is_empty();
        assert!(ok(json!({"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"})));
        assert!(ok(json!({"key": "dedicated", "value": "gpu"})));
        assert!(!ok(json!({"key": "dedicated", "value": "cpu"})));
        assert!(ok(json!({"key": "dedicated", "operator": "Exists"})));
        assert!(ok(json!({"operator": "Exists"})));
        assert!(!ok(json!({"key": "dedicated", "operator": "Exists", "effect": "NoExecute"})));
    }

    #[test]
    fn node_selector_requires_every_label() {
        let n = node(json!({"metadata": {"labels": {"disk": "ssd", "zone": "a"}}}));
        assert!(reasons(&pod(json!({"spec": {"nodeSelector": {"disk": "ssd"}}})), &n).is_empty());
        assert_eq!(reasons(&pod(json!({"spec": {"nodeSelector": {"disk": "ssd", "zone": "b"}}})), &n), vec![AFFINITY]);
    }

    #[test]
    fn required_node_affinity_operators() {
        let n = node(json!({"metadata": {"name": "n1", "labels": {"disk": "ssd", "cores": "8"}}}));
        let ok = |exprs: serde_json::Value| {
            let p = pod(json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": exprs}]}}}}}));
            matches_node_selector(&p, &n)
        };
        assert!(ok(json!([{"key": "disk", "operator": "In", "values": ["ssd", "nvme"]}])));
        assert!(!ok(json!([{"key": "disk", "operator": "In", "values": ["hdd"]}])));
        assert!(ok(json!([{"key": "disk", "operator": "NotIn", "values": ["hdd"]}])));
        assert!(ok(json!([{"key": "gpu", "operator": "NotIn", "values": ["x"]}])));
        assert!(ok(json!([{"key": "disk", "operator": "Exists"}])));
        assert!(!ok(json!([{"key": "gpu", "operator": "Exists"}])));
        assert!(ok(json!([{"key": "gpu", "operator": "DoesNotExist"}])));
        assert!(ok(json!([{"key": "cores", "operator": "Gt", "values": ["4"]}])));
        assert!(!ok(json!([{"key": "cores", "operator": "Lt", "values": ["4"]}])));
        assert!(!ok(json!([{"key": "disk", "operator": "Gt", "values": ["4"]}])));
        // Expressions of a term are ANDed.
        assert!(!ok(json!([{"key": "disk", "operator": "Exists"}, {"key": "gpu", "operator": "Exists"}])));
    }

    #[test]
    fn node_affinity_terms_are_ored_and_match_fields_by_name() {
        let n = node(json!({"metadata": {"name": "n1", "labels": {"disk": "ssd"}}}));
        let p = pod(json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["hdd"]}]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}
        ]}}}}}));
        assert!(matches_node_selector(&p, &n));
        let p = pod(json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{}]}}}}}));
        assert!(!matches_node_selector(&p, &n), "an empty term matches nothing");
    }

    #[test]
    fn resources_count_pods_already_on_the_node() {
        let n = node(json!({}));
        let mut usage = NodeUsage::default();
        usage.add(&with_requests("1500m", "1Gi"));
        let f = filter(&with_requests("1", "1Gi"), &n, &usage).err().map(|f| f.reasons);
        assert_eq!(f, Some(vec!["Insufficient cpu".to_string()]));
        let f = filter(&with_requests("1", "4Gi"), &n, &usage).err().map(|f| f.reasons);
        assert_eq!(f, Some(vec!["Insufficient cpu".to_string(), "Insufficient memory".to_string()]));
        assert_eq!(filter(&with_requests("500m", "3Gi"), &n, &usage), Ok(()));
    }

    #[test]
    fn limits_stand_for_missing_requests_and_init_containers_take_the_max() {
        let p = pod(json!({"spec": {
            "containers": [{"name": "c", "image": "x", "resources": {"limits": {"cpu": "1"}}}],
            "initContainers": [{"name": "i", "image": "x", "resources": {"requests": {"cpu": "3", "memory": "1Mi"}}}]
        }}));
        let r = pod_requests(&p);
        assert_eq!(r.get("cpu"), 3000);
        assert_eq!(r.get("memory"), 1024 * 1024 * 1000);
    }

    #[test]
    fn extended_resources_are_counted_and_reported_after_the_standard_ones() {
        let n = node(json!({"status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "10", "example.com/gpu": "1", "a.io/fpga": "2"}}}));
        let want = |cpu: &str, gpu: &str, fpga: &str| pod(json!({"spec": {"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": cpu, "example.com/gpu": gpu, "a.io/fpga": fpga}}}]}}));
        let mut usage = NodeUsage::default();
        assert_eq!(filter(&want("1", "1", "2"), &n, &usage), Ok(()));
        usage.add(&want("1", "1", "1"));
        assert_eq!(usage.requested.get("example.com/gpu"), 1000);
        let f = filter(&want("2", "1", "2"), &n, &usage).err().map(|f| f.reasons);
        assert_eq!(f, Some(vec!["Insufficient cpu".to_string(), "Insufficient a.io/fpga".to_string(), "Insufficient example.com/gpu".to_string()]));
        // Removing the pod gives everything back.
        usage.remove_info(&PodInfo::of(&want("1", "1", "1")));
        assert_eq!(filter(&want("2", "1", "2"), &n, &usage), Ok(()));
        // A sidecar (restartable init container) adds to the app containers; zero amounts are absent.
        let p = pod(json!({"spec": {
            "containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "1", "example.com/gpu": "0"}}}],
            "initContainers": [{"name": "s", "image": "x", "restartPolicy": "Always", "resources": {"requests": {"cpu": "500m"}}}]
        }}));
        let r = pod_requests(&p);
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![("cpu", 1500)]);
    }

    #[test]
    fn too_many_pods_when_pod_capacity_is_used() {
        let n = node(json!({"status": {"allocatable": {"pods": "1"}}}));
        let mut usage = NodeUsage::default();
        usage.add(&pod(json!({})));
        assert_eq!(filter(&pod(json!({})), &n, &usage).err().map(|f| f.reasons), Some(vec![TOO_MANY_PODS.to_string()]));
    }

    #[test]
    fn host_port_conflicts_by_port_protocol_and_ip() {
        let with_port = |port: i32, ip: Option<&str>, proto: &str| {
            pod(json!({"spec": {"containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 80, "hostPort": port, "hostIP": ip, "protocol": proto}]}]}}))
        };
        let n = node(json!({}));
        let mut usage = NodeUsage::default();
        usage.add(&with_port(8080, Some("10.0.0.1"), "TCP"));
        let f = |p: &Pod| filter(p, &n, &usage).err().map(|f| f.reasons);
        assert_eq!(f(&with_port(8080, None, "TCP")), Some(vec![PORTS.to_string()]));
        assert_eq!(f(&with_port(8080, Some("10.0.0.2"), "TCP")), None);
        assert_eq!(f(&with_port(8080, Some("10.0.0.1"), "UDP")), None);
        assert_eq!(f(&with_port(8081, None, "TCP")), None);
    }

    #[test]
    fn filters_run_in_upstream_order_first_failure_wins() {
        let n = node(json!({"spec": {"unschedulable": true, "taints": [{"key": "k", "effect": "NoSchedule"}]}, "metadata": {"labels": {}}}));
        let p = pod(json!({"spec": {"nodeSelector": {"x": "y"}}}));
        assert_eq!(reasons(&p, &n), vec![UNSCHEDULABLE]);
    }

    #[test]
    fn least_allocated_prefers_the_emptier_node() {
        let n = node(json!({}));
        let mut busy = NodeUsage::default();
        busy.add(&with_requests("1", "2Gi"));
        let p = with_requests("500m", "1Gi");
        assert!(score(&p, &n, &NodeUsage::default()) > score(&p, &n, &busy));
        // 2 cpu, 4Gi: (1.5/2*100=75 + 3/4*100=75) / 2
        assert_eq!(score(&p, &n, &NodeUsage::default()), 75);
    }

    #[test]
    fn fit_error_message_is_a_sorted_histogram_with_preemption_part() {
        let taint = Failure::unresolvable("node(s) had untolerated taint {key: value}");
        let mem = Failure { reasons: vec!["Insufficient memory".into()], unresolvable: false };
        assert_eq!(
            fit_error_message(3, &[mem.clone(), taint, mem]),
            "0/3 nodes are available: 1 node(s) had untolerated taint {key: value}, 2 Insufficient memory. \
             preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, 2 No preemption victims found for incoming pod."
        );
        assert_eq!(fit_error_message(0, &[]), "no nodes available to schedule pods");
    }
}
