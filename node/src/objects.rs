//! The API objects a hollow node writes, as pure functions of the flags, the object they
//! replace and the time: Node, its status, its Lease, and pod statuses.

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStatus, DaemonEndpoint, Event, EventSource, HostIP, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus, NodeSystemInfo, ObjectReference, Pod, PodCondition, PodIP, PodStatus, Taint};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};

use crate::args::{Shape, HOLLOW_LABEL};

pub const LEASE_NAMESPACE: &str = "kube-node-lease";
pub const LEASE_DURATION_SECONDS: i32 = 40;
pub const KUBELET_VERSION: &str = "v1.33.0-kuberaft";
/// Hollow nodes have no network of their own; the address only has to be well-formed.
pub const HOST_IP: &str = "127.0.0.1";

/// The labels of node `i` of `shape`.
pub fn node_labels(shape: &Shape, i: usize) -> BTreeMap<String, String> {
    let mut l = shape.labels.clone();
    if !shape.zones.is_empty() {
        l.insert(ZONE_LABEL.into(), shape.zones[i % shape.zones.len()].clone());
    }
    let name = shape.names.get(i).map(String::as_str).unwrap_or_default();
    for (k, v) in [("kubernetes.io/hostname", name), ("kubernetes.io/os", "linux"), ("kubernetes.io/arch", "amd64"), HOLLOW_LABEL] {
        l.insert(k.into(), v.into());
    }
    l
}

/// The well-known zone label (--zones).
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Node `i` of `shape` to create, status included.
pub fn node_object(shape: &Shape, i: usize, now: Timestamp) -> Node {
    let name = shape.names.get(i).map(String::as_str).unwrap_or_default();
    Node {
        metadata: ObjectMeta { name: Some(name.into()), labels: Some(node_labels(shape, i)), ..Default::default() },
        spec: Some(NodeSpec { taints: (!shape.taints.is_empty()).then(|| shape.taints.clone()), ..Default::default() }),
        status: Some(node_status(shape, name, None, now)),
    }
}

/// A stable fake machine id, so `kubectl describe node` shows something per node.
fn machine_id(name: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}{:016x}", h.rotate_left(29) ^ 0x9e3779b97f4a7c15)
}

/// The status to report; conditions keep `old`'s transition times while their status stays.
pub fn node_status(shape: &Shape, name: &str, old: Option<&NodeStatus>, now: Timestamp) -> NodeStatus {
    let old_conds = old.and_then(|s| s.conditions.as_deref()).unwrap_or_default();
    let cond = |t: &str, status: &str, reason: &str, message: &str| {
        let since = old_conds.iter().find(|c| c.type_ == t && c.status == status).and_then(|c| c.last_transition_time.clone());
        NodeCondition {
            type_: t.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_heartbeat_time: Some(Time(now)),
            last_transition_time: Some(since.unwrap_or(Time(now))),
        }
    };
    let resources: BTreeMap<String, Quantity> = [
        ("cpu", shape.cpu.clone()),
        ("memory", shape.memory.clone()),
        ("pods", shape.max_pods.to_string()),
        ("ephemeral-storage", "100Gi".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Quantity(v)))
    .collect();
    let id = machine_id(name);
    NodeStatus {
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        conditions: Some(vec![
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
        ]),
        addresses: Some(vec![NodeAddress { type_: "InternalIP".into(), address: HOST_IP.into() }, NodeAddress { type_: "Hostname".into(), address: name.into() }]),
        daemon_endpoints: Some(NodeDaemonEndpoints { kubelet_endpoint: Some(DaemonEndpoint { port: 10250 }) }),
        node_info: Some(NodeSystemInfo {
            architecture: "amd64".into(),
            operating_system: "linux".into(),
            os_image: "hollow".into(),
            kernel_version: shape.kernel_version.clone(),
            kubelet_version: KUBELET_VERSION.into(),
            kube_proxy_version: String::new(),
            container_runtime_version: "hollow://1.0".into(),
            machine_id: id.clone(),
            system_uuid: format!("{}-{}-{}-{}-{}", &id[0..8], &id[8..12], &id[12..16], &id[16..20], &id[20..32]),
            boot_id: id,
            swap: None,
        }),
        ..Default::default()
    }
}

/// Whether the stored status says what we would (heartbeat times aside): if not, someone
/// else changed it (e.g. Ready=Unknown after missed heartbeats) and we report again now.
pub fn node_status_conforms(shape: &Shape, node: &Node) -> bool {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let Some(cur) = node.status.as_ref() else { return false };
    let want = node_status(shape, name, Some(cur), Timestamp::UNIX_EPOCH);
    let conds = |s: &NodeStatus| -> Vec<(String, String, Option<String>)> {
        let mut v: Vec<_> = s.conditions.iter().flatten().filter(|c| want_types(&want).contains(&c.type_)).map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone())).collect();
        v.sort();
        v
    };
    conds(cur) == conds(&want)
        && cur.capacity == want.capacity
        && cur.allocatable == want.allocatable
        && cur.node_info == want.node_info
        && cur.daemon_endpoints == want.daemon_endpoints
        && want.addresses.iter().flatten().all(|a| cur.addresses.iter().flatten().any(|c| c == a))
}

fn want_types(s: &NodeStatus) -> Vec<String> {
    s.conditions.iter().flatten().map(|c| c.type_.clone()).collect()
}

/// Merge patch for an existing Node: our labels added, our taints set (others' taints, e.g.
/// the node lifecycle controller's, kept), guarded by its resourceVersion.
pub fn node_update_patch(shape: &Shape, i: usize, existing: &Node) -> Value {
    let mut taints: Vec<Taint> = existing.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
    taints.retain(|t| !shape.taints.iter().any(|o| o.key == t.key && o.effect == t.effect));
    taints.extend(shape.taints.iter().cloned());
    json!({
        "metadata": {"labels": node_labels(shape, i), "resourceVersion": existing.metadata.resource_version},
        "spec": {"taints": if taints.is_empty() { Value::Null } else { json!(taints) }},
    })
}

pub fn lease_object(name: &str, node_uid: Option<&str>, now: Timestamp) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(LEASE_NAMESPACE.into()),
            // As kubelet does: the Lease goes when its Node does.
            owner_references: node_uid.map(|uid| {
                vec![OwnerReference { api_version: "v1".into(), kind: "Node".into(), name: name.into(), uid: uid.into(), ..Default::default() }]
            }),
            ..Default::default()
        },
        spec: Some(lease_spec(name, now)),
    }
}

fn lease_spec(name: &str, now: Timestamp) -> LeaseSpec {
    LeaseSpec { holder_identity: Some(name.into()), lease_duration_seconds: Some(LEASE_DURATION_SECONDS), renew_time: Some(MicroTime(now)), ..Default::default() }
}

pub fn lease_renew_patch(name: &str, now: Timestamp) -> Value {
    json!({"spec": lease_spec(name, now)})
}

// ----- pods -----

/// An Event about `pod` from the kubelet on `node`, as `kubectl describe pod` lists them;
/// `field_path` names the container (`spec.containers{NAME}`).
pub fn pod_event(pod: &Pod, type_: &str, reason: &str, message: &str, node: Option<&str>, now: Timestamp, field_path: &str) -> Event {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let time = Time(now);
    Event {
        metadata: ObjectMeta { name: Some(format!("{name}.{:x}", now.as_nanosecond())), namespace: pod.metadata.namespace.clone(), ..Default::default() },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(name),
            namespace: pod.metadata.namespace.clone(),
            uid: pod.metadata.uid.clone(),
            resource_version: pod.metadata.resource_version.clone(),
            field_path: Some(field_path.to_string()),
        },
        reason: Some(reason.into()),
        message: Some(message.into()),
        type_: Some(type_.into()),
        count: Some(1),
        first_timestamp: Some(time.clone()),
        last_timestamp: Some(time),
        source: Some(EventSource { component: Some("kubelet".into()), host: node.map(str::to_string) }),
        reporting_component: Some("kubelet".into()),
        reporting_instance: node.map(str::to_string),
        ..Default::default()
    }
}

/// Job pods that may finish: they complete after a moment so Jobs can make progress.
pub fn is_job_pod(pod: &Pod) -> bool {
    let owned_by_job = pod.metadata.owner_references.iter().flatten().any(|o| o.kind == "Job");
    let restart = pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()).unwrap_or("Always");
    owned_by_job && matches!(restart, "Never" | "OnFailure")
}

pub fn is_terminal(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

fn old_status(pod: &Pod) -> Option<&PodStatus> {
    pod.status.as_ref()
}

fn container_id(pod: &Pod, name: &str) -> String {
    format!("hollow://{}-{name}", pod.metadata.uid.as_deref().unwrap_or_default())
}

fn old_container<'a>(pod: &'a Pod, init: bool, name: &str) -> Option<&'a ContainerStatus> {
    let s = old_status(pod)?;
    let list = if init { s.init_container_statuses.as_ref() } else { s.container_statuses.as_ref() };
    list?.iter().find(|c| c.name == name)
}

/// When the container started, as reported before (running or terminated), else `now`.
fn started_at(pod: &Pod, init: bool, name: &str, now: Timestamp) -> Time {
    let st = old_container(pod, init, name).and_then(|c| c.state.as_ref());
    st.and_then(|s| s.running.as_ref().and_then(|r| r.started_at.clone()).or_else(|| s.terminated.as_ref().and_then(|t| t.started_at.clone()))).unwrap_or(Time(now))
}

fn pod_condition(pod: &Pod, t: &str, status: bool, reason: Option<&str>, now: Timestamp) -> PodCondition {
    let status = if status { "True" } else { "False" };
    let since = old_status(pod).and_then(|s| s.conditions.as_ref()).and_then(|cs| cs.iter().find(|c| c.type_ == t && c.status == status)).and_then(|c| c.last_transition_time.clone());
    PodCondition { type_: t.into(), status: status.into(), reason: reason.map(str::to_string), last_transition_time: Some(since.unwrap_or(Time(now))), ..Default::default() }
}

fn container_status(pod: &Pod, init: bool, name: &str, image: &str, state: ContainerState, ready: bool, started: bool) -> ContainerStatus {
    ContainerStatus {
        name: name.into(),
        image: image.into(),
        image_id: format!("hollow://{image}"),
        container_id: Some(container_id(pod, name)),
        ready,
        started: Some(started),
        restart_count: old_container(pod, init, name).map(|c| c.restart_count).unwrap_or(0),
        state: Some(state),
        ..Default::default()
    }
}

fn running(at: Time) -> ContainerState {
    ContainerState { running: Some(ContainerStateRunning { started_at: Some(at) }), ..Default::default() }
}

fn terminated(pod: &Pod, name: &str, started: Time, finished: Timestamp, exit_code: i32, reason: &str) -> ContainerState {
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code,
            reason: Some(reason.into()),
            started_at: Some(started),
            finished_at: Some(Time(finished)),
            container_id: Some(container_id(pod, name)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Sidecars (init containers with restartPolicy Always) keep running next to the others.
fn is_sidecar(c: &k8s_openapi::api::core::v1::Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

/// Init containers of a started pod: completed, sidecars running.
fn init_statuses(pod: &Pod, now: Timestamp, sidecars_running: bool) -> Option<Vec<ContainerStatus>> {
    let inits = pod.spec.as_ref()?.init_containers.as_ref()?;
    Some(
        inits
            .iter()
            .map(|c| {
                let image = c.image.as_deref().unwrap_or_default();
                let at = started_at(pod, true, &c.name, now);
                if is_sidecar(c) && sidecars_running {
                    container_status(pod, true, &c.name, image, running(at), true, true)
                } else {
                    let finished = old_container(pod, true, &c.name).and_then(|o| o.state.as_ref()?.terminated.as_ref()?.finished_at.clone()).map(|t| t.0).unwrap_or(now);
                    let (code, reason) = if is_sidecar(c) { (143, "Error") } else { (0, "Completed") };
                    container_status(pod, true, &c.name, image, terminated(pod, &c.name, at, finished, code, reason), !is_sidecar(c), false)
                }
            })
            .collect(),
    )
}

fn base_status(pod: &Pod, phase: &str, ip: Option<&str>, now: Timestamp) -> PodStatus {
    let ip = ip.map(str::to_string).or_else(|| old_status(pod).and_then(|s| s.pod_ip.clone()));
    PodStatus {
        phase: Some(phase.into()),
        pod_ip: ip.clone(),
        pod_ips: ip.map(|ip| vec![PodIP { ip }]),
        host_ip: Some(HOST_IP.into()),
        host_ips: Some(vec![HostIP { ip: HOST_IP.into() }]),
        start_time: Some(old_status(pod).and_then(|s| s.start_time.clone()).unwrap_or(Time(now))),
        ..Default::default()
    }
}

/// A running pod: every container running and ready.
pub fn running_status(pod: &Pod, ip: &str, now: Timestamp) -> PodStatus {
    let containers = pod.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default();
    let statuses: Vec<ContainerStatus> =
        containers.iter().map(|c| container_status(pod, false, &c.name, c.image.as_deref().unwrap_or_default(), running(started_at(pod, false, &c.name, now)), true, true)).collect();
    let old_conds = old_status(pod).and_then(|s| s.conditions.as_deref()).unwrap_or_default();
    // Ready also needs the pod's readiness gates, which others set.
    let gates_ok = pod.spec.as_ref().and_then(|s| s.readiness_gates.as_ref()).into_iter().flatten().all(|g| old_conds.iter().any(|c| c.type_ == g.condition_type && c.status == "True"));
    let mut s = base_status(pod, "Running", Some(ip), now);
    s.conditions = Some(vec![
        pod_condition(pod, "PodReadyToStartContainers", true, None, now),
        pod_condition(pod, "Initialized", true, None, now),
        pod_condition(pod, "Ready", gates_ok, (!gates_ok).then_some("ReadinessGatesNotReady"), now),
        pod_condition(pod, "ContainersReady", true, None, now),
        pod_condition(pod, "PodScheduled", true, None, now),
    ]);
    s.container_statuses = Some(statuses);
    s.init_container_statuses = init_statuses(pod, now, true);
    s
}

/// A finished pod: containers terminated with `exit_code`; phase Succeeded when that is 0.
pub fn finished_status(pod: &Pod, exit_code: i32, now: Timestamp) -> PodStatus {
    let (phase, reason) = if exit_code == 0 { ("Succeeded", "Completed") } else { ("Failed", "Error") };
    let containers = pod.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default();
    let statuses: Vec<ContainerStatus> = containers
        .iter()
        .map(|c| {
            let at = started_at(pod, false, &c.name, now);
            let finished = old_container(pod, false, &c.name).and_then(|o| o.state.as_ref()?.terminated.as_ref()?.finished_at.clone()).map(|t| t.0).unwrap_or(now);
            container_status(pod, false, &c.name, c.image.as_deref().unwrap_or_default(), terminated(pod, &c.name, at, finished, exit_code, reason), false, false)
        })
        .collect();
    let not_ready = if exit_code == 0 { "PodCompleted" } else { "PodFailed" };
    let mut s = base_status(pod, phase, None, now);
    s.conditions = Some(vec![
        pod_condition(pod, "PodReadyToStartContainers", false, None, now),
        pod_condition(pod, "Initialized", true, None, now),
        pod_condition(pod, "Ready", false, Some(not_ready), now),
        pod_condition(pod, "ContainersReady", false, Some(not_ready), now),
        pod_condition(pod, "PodScheduled", true, None, now),
    ]);
    s.container_statuses = Some(statuses);
    s.init_container_statuses = init_statuses(pod, now, false);
    s
}

/// name, ready, started, container id, exit code if terminated, running.
type ContainerSummary = (String, bool, Option<bool>, Option<String>, Option<i32>, bool);

/// The parts of a status that matter for deciding whether to write it again: times aside.
#[derive(PartialEq, Debug)]
struct Summary {
    phase: Option<String>,
    pod_ip: Option<String>,
    host_ip: Option<String>,
    started: bool,
    conditions: Vec<(String, String)>,
    containers: Vec<ContainerSummary>,
}

fn summary(s: &PodStatus, cond_types: &[String]) -> Summary {
    let cs = |l: &Option<Vec<ContainerStatus>>| {
        let mut v: Vec<ContainerSummary> = l
            .iter()
            .flatten()
            .map(|c| {
                let st = c.state.as_ref();
                (c.name.clone(), c.ready, c.started, c.container_id.clone(), st.and_then(|s| s.terminated.as_ref()).map(|t| t.exit_code), st.and_then(|s| s.running.as_ref()).is_some())
            })
            .collect();
        v.sort();
        v
    };
    let mut conditions: Vec<_> = s.conditions.iter().flatten().filter(|c| cond_types.contains(&c.type_)).map(|c| (c.type_.clone(), c.status.clone())).collect();
    conditions.sort();
    let mut containers = cs(&s.container_statuses);
    containers.extend(cs(&s.init_container_statuses));
    Summary { phase: s.phase.clone(), pod_ip: s.pod_ip.clone(), host_ip: s.host_ip.clone(), started: s.start_time.is_some(), conditions, containers }
}

/// Whether the pod's stored status already says what `want` says.
pub fn status_conforms(pod: &Pod, want: &PodStatus) -> bool {
    let types: Vec<String> = want.conditions.iter().flatten().map(|c| c.type_.clone()).collect();
    pod.status.as_ref().is_some_and(|cur| summary(cur, &types) == summary(want, &types))
}

/// A strategic merge patch of pods/status, guarded by the pod's uid (as kubelet's is): a pod
/// deleted and created again under the same name is not written with its predecessor's status.
pub fn pod_status_patch(pod: &Pod, status: &PodStatus) -> Value {
    json!({"metadata": {"uid": pod.metadata.uid}, "status": status})
}

/// When the pod started, per its status.
pub fn start_time(pod: &Pod) -> Option<Timestamp> {
    pod.status.as_ref()?.start_time.as_ref().map(|t| t.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::NodeArgs;

    fn shape() -> Shape {
        let a = NodeArgs::from_flags(["--hollow", "--kubeconfig", "k", "--name", "h", "--hollow-count", "2", "--labels", "zone=a,kubernetes.io/os=plan9", "--taints", "t=v:NoSchedule"])
            .expect("flags");
        Shape::from_args(&a, || unreachable!()).expect("shape")
    }

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).expect("time")
    }

    #[test]
    fn node_has_labels_taints_and_ready_status() {
        let s = shape();
        let n = node_object(&s, 1, ts(1000));
        let l = n.metadata.labels.as_ref().expect("labels");
        assert_eq!(l["kubernetes.io/hostname"], "h-1");
        assert_eq!(l["kubernetes.io/os"], "linux", "well-known labels win over --labels");
        assert_eq!(l["node.kubernetes.io/instance-type"], "hollow");
        assert_eq!(l["zone"], "a");
        let taints = n.spec.as_ref().and_then(|s| s.taints.as_ref()).expect("taints");
        assert_eq!((taints[0].key.as_str(), taints[0].effect.as_str()), ("t", "NoSchedule"));
        let st = n.status.as_ref().expect("status");
        let cap = st.capacity.as_ref().expect("capacity");
        assert_eq!((cap["cpu"].0.as_str(), cap["memory"].0.as_str(), cap["pods"].0.as_str()), ("4", "8Gi", "110"));
        assert!(cap.contains_key("ephemeral-storage"));
        assert_eq!(st.allocatable, st.capacity);
        let ready = st.conditions.iter().flatten().find(|c| c.type_ == "Ready").expect("Ready");
        assert_eq!((ready.status.as_str(), ready.reason.as_deref()), ("True", Some("KubeletReady")));
        assert_eq!(st.conditions.iter().flatten().filter(|c| c.status == "False").count(), 3);
        let info = st.node_info.as_ref().expect("info");
        assert_eq!((info.kubelet_version.as_str(), info.os_image.as_str(), info.container_runtime_version.as_str()), (KUBELET_VERSION, "hollow", "hollow://1.0"));
        let v = serde_json::to_value(&n).expect("json");
        assert_eq!(v["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"], 10250);
        assert_eq!(v["status"]["addresses"], json!([{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": "h-1"}]));
        assert!(node_status_conforms(&s, &n));
    }

    #[test]
    fn zones_go_round_robin_and_bad_ones_are_refused() {
        let a = NodeArgs::from_flags(["--hollow", "--kubeconfig", "k", "--name", "h", "--hollow-count", "5", "--zones", "z1,z2"]).expect("flags");
        let s = Shape::from_args(&a, || unreachable!()).expect("shape");
        let zones: Vec<String> = (0..5).map(|i| node_object(&s, i, ts(1)).metadata.labels.expect("labels")[ZONE_LABEL].clone()).collect();
        assert_eq!(zones, ["z1", "z2", "z1", "z2", "z1"]);
        assert_eq!(node_update_patch(&s, 1, &node_object(&s, 1, ts(1)))["metadata"]["labels"][ZONE_LABEL], "z2");
        assert!(!node_labels(&shape(), 0).contains_key(ZONE_LABEL), "no --zones, no zone");
        let bad = NodeArgs::from_flags(["--hollow", "--kubeconfig", "k", "--zones", "ok,not ok"]).expect("flags");
        let e = Shape::from_args(&bad, || Ok("h".into())).expect_err("a zone with a space");
        assert!(format!("{e:#}").contains("--zones"), "{e:#}");
    }

    #[test]
    fn node_status_keeps_transition_times_and_notices_changes() {
        let s = shape();
        let mut n = node_object(&s, 0, ts(1000));
        let later = node_status(&s, "h-0", n.status.as_ref(), ts(2000));
        let ready = later.conditions.iter().flatten().find(|c| c.type_ == "Ready").expect("Ready");
        assert_eq!(ready.last_transition_time, Some(Time(ts(1000))));
        assert_eq!(ready.last_heartbeat_time, Some(Time(ts(2000))));
        // The node lifecycle controller marks it Unknown: we must report again, with a new transition.
        for c in n.status.as_mut().and_then(|s| s.conditions.as_mut()).expect("conds") {
            if c.type_ == "Ready" {
                c.status = "Unknown".into();
            }
        }
        assert!(!node_status_conforms(&s, &n));
        let again = node_status(&s, "h-0", n.status.as_ref(), ts(3000));
        let ready = again.conditions.iter().flatten().find(|c| c.type_ == "Ready").expect("Ready");
        assert_eq!(ready.last_transition_time, Some(Time(ts(3000))));
        n.status = None;
        assert!(!node_status_conforms(&s, &n));
    }

    #[test]
    fn update_patch_keeps_foreign_taints() {
        let s = shape();
        let mut n = node_object(&s, 0, ts(1));
        n.metadata.resource_version = Some("42".into());
        n.spec = Some(NodeSpec {
            taints: Some(vec![
                Taint { key: "t".into(), value: Some("old".into()), effect: "NoSchedule".into(), time_added: None },
                Taint { key: "node.kubernetes.io/unreachable".into(), value: None, effect: "NoExecute".into(), time_added: None },
            ]),
            ..Default::default()
        });
        let p = node_update_patch(&s, 0, &n);
        assert_eq!(p["metadata"]["resourceVersion"], "42");
        assert_eq!(p["spec"]["taints"], json!([{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}, {"key": "t", "value": "v", "effect": "NoSchedule"}]));
    }

    #[test]
    fn lease_names_holder_and_owner() {
        let l = serde_json::to_value(lease_object("h-0", Some("uid-1"), ts(5))).expect("json");
        assert_eq!(l["metadata"]["namespace"], LEASE_NAMESPACE);
        assert_eq!(l["spec"]["holderIdentity"], "h-0");
        assert_eq!(l["spec"]["leaseDurationSeconds"], 40);
        assert_eq!(l["spec"]["renewTime"], "1970-01-01T00:00:05.000000Z");
        assert_eq!(l["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert!(lease_object("h-0", None, ts(5)).metadata.owner_references.is_none());
    }

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).expect("pod")
    }

    #[test]
    fn running_then_conforming() {
        let mut p = pod(json!({"metadata": {"name": "p", "uid": "U"}, "spec": {"nodeName": "h-0", "containers": [{"name": "c", "image": "nginx"}],
            "initContainers": [{"name": "i", "image": "busybox"}, {"name": "side", "image": "envoy", "restartPolicy": "Always"}]},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": "1970-01-01T00:00:01Z"}]}}));
        let s = running_status(&p, "10.244.0.1", ts(10));
        assert!(!status_conforms(&p, &s));
        let v = serde_json::to_value(&s).expect("json");
        assert_eq!(v["phase"], "Running");
        assert_eq!(v["podIP"], "10.244.0.1");
        assert_eq!(v["podIPs"], json!([{"ip": "10.244.0.1"}]));
        assert_eq!(v["hostIP"], HOST_IP);
        assert_eq!(v["containerStatuses"][0]["containerID"], "hollow://U-c");
        assert_eq!(v["containerStatuses"][0]["ready"], true);
        assert_eq!(v["containerStatuses"][0]["started"], true);
        assert_eq!(v["containerStatuses"][0]["restartCount"], 0);
        assert_eq!(v["containerStatuses"][0]["state"]["running"]["startedAt"], "1970-01-01T00:00:10Z");
        assert_eq!(v["initContainerStatuses"][0]["state"]["terminated"]["reason"], "Completed");
        assert!(v["initContainerStatuses"][1]["state"]["running"].is_object(), "sidecars run");
        let conds: BTreeMap<String, (String, String)> =
            s.conditions.iter().flatten().map(|c| (c.type_.clone(), (c.status.clone(), serde_json::to_string(&c.last_transition_time).expect("t")))).collect();
        assert_eq!(conds["Ready"].0, "True");
        assert_eq!(conds["PodScheduled"].1, "\"1970-01-01T00:00:01Z\"", "transition kept");
        p.status = Some(s.clone());
        assert!(status_conforms(&p, &running_status(&p, "10.244.0.1", ts(99))), "same again: no write");
        assert_eq!(running_status(&p, "10.244.0.1", ts(99)), s, "times kept");
        assert!(!status_conforms(&p, &running_status(&p, "10.244.0.2", ts(99))));
        assert_eq!(pod_status_patch(&p, &s)["metadata"]["uid"], "U");
    }

    #[test]
    fn readiness_gates_hold_ready_back() {
        let p = pod(json!({"metadata": {"name": "p", "uid": "U"}, "spec": {"containers": [{"name": "c"}], "readinessGates": [{"conditionType": "example.com/lb"}]}}));
        let s = running_status(&p, "10.244.0.1", ts(1));
        let ready = s.conditions.iter().flatten().find(|c| c.type_ == "Ready").expect("Ready");
        assert_eq!((ready.status.as_str(), ready.reason.as_deref()), ("False", Some("ReadinessGatesNotReady")));
    }

    #[test]
    fn finished_pods() {
        let mut p = pod(json!({"metadata": {"name": "p", "uid": "U", "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": "J"}]},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}));
        assert!(is_job_pod(&p));
        p.status = Some(running_status(&p, "10.244.0.1", ts(10)));
        let done = finished_status(&p, 0, ts(11));
        let v = serde_json::to_value(&done).expect("json");
        assert_eq!(v["phase"], "Succeeded");
        assert_eq!(v["podIP"], "10.244.0.1", "IP kept");
        assert_eq!(v["containerStatuses"][0]["state"]["terminated"], json!({"exitCode": 0, "reason": "Completed", "startedAt": "1970-01-01T00:00:10Z", "finishedAt": "1970-01-01T00:00:11Z", "containerID": "hollow://U-c"}));
        assert_eq!(v["containerStatuses"][0]["ready"], false);
        let killed = serde_json::to_value(finished_status(&p, 143, ts(11))).expect("json");
        assert_eq!(killed["phase"], "Failed");
        assert_eq!(killed["containerStatuses"][0]["state"]["terminated"]["reason"], "Error");
        p.status = Some(done);
        assert!(is_terminal(&p));
        assert!(status_conforms(&p, &finished_status(&p, 0, ts(50))));
        let always = pod(json!({"metadata": {"ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": "J"}]}, "spec": {"containers": []}}));
        assert!(!is_job_pod(&always), "restartPolicy Always never completes");
    }

    #[test]
    fn odd_pods_do_not_panic() {
        let p = pod(json!({"metadata": {}}));
        let s = running_status(&p, "10.244.0.1", ts(1));
        assert_eq!(s.container_statuses.as_ref().map(Vec::len), Some(0));
        let _ = finished_status(&p, 0, ts(1));
        assert!(!is_job_pod(&p));
        assert!(!status_conforms(&p, &s));
    }
}
