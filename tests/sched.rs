//! The scheduler (sched crate) in process against three replicas: binding, filters, the
//! unschedulable path and its retry, leader election between two schedulers, and fencing.

mod common;

use futures::FutureExt;
use std::time::{Duration, Instant};

use common::Cluster;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use sched::{ElectionConfig, SchedulerOptions};

async fn config(c: &Cluster) -> kube::Config {
    let kc = kube::config::Kubeconfig::read_from(c.path().join("n1").join("kubeconfig")).expect("kubeconfig");
    kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.expect("config")
}

/// Short timings so that takeovers happen within seconds.
/// An election on Lease kube-system/NAME with short timings (3 s lease, 2 s renew deadline).
fn fast_election(name: &str, identity: &str) -> ElectionConfig {
    let mut e = ElectionConfig::new("kube-system", name, identity);
    e.lease_duration = Duration::from_secs(3);
    e.renew_deadline = Duration::from_secs(2);
    e.retry_period = Duration::from_millis(300);
    e
}

fn fast(identity: &str) -> SchedulerOptions {
    let mut o = SchedulerOptions::new(identity);
    assert_eq!(o.lease_namespace, "kube-system");
    o.election = Some(fast_election(&o.lease_name, identity));
    o
}

fn start(cfg: kube::Config, opts: SchedulerOptions) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = sched::run_scheduler(cfg, opts).await {
            panic!("scheduler failed: {e:#}");
        }
    })
}

/// Polls `f` until it returns Some, or panics with `what` after `timeout`.
async fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn node_yaml(name: &str, cpu: &str, memory: &str, labels: &str, taints: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Node
metadata:
  name: {name}
  labels: {{kubernetes.io/hostname: {name}{labels}}}
spec:
  taints: [{taints}]
status:
  allocatable: {{cpu: "{cpu}", memory: "{memory}", pods: "10"}}
  capacity: {{cpu: "{cpu}", memory: "{memory}", pods: "10"}}
  conditions:
  - {{type: Ready, status: "True", reason: KubeletReady, message: ready}}
"#
    )
}

fn pod_yaml(name: &str, memory: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  containers:
  - name: c
    image: busybox
    resources:
      requests: {{cpu: 100m, memory: "{memory}"}}
{extra}"#
    )
}

fn create(c: &Cluster, yaml: &str) {
    let out = c.kubectl_stdin(&["create", "-f", "-"], yaml);
    assert!(out.status.success(), "kubectl create failed: {}\n{yaml}", String::from_utf8_lossy(&out.stderr));
}

fn get(c: &Cluster, args: &[&str]) -> String {
    let out = c.kubectl(args);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn node_of(c: &Cluster, pod: &str) -> Option<String> {
    Some(get(c, &["get", "pod", pod, "-o", "jsonpath={.spec.nodeName}"])).filter(|n| !n.is_empty())
}

fn holder(c: &Cluster) -> Option<String> {
    Some(get(c, &["get", "lease", "-n", "kube-system", "kuberaft-scheduler", "-o", "jsonpath={.spec.holderIdentity}"])).filter(|h| !h.is_empty())
}

/// Events about `pod` as (reason, message).
fn events(c: &Cluster, pod: &str) -> Vec<(String, String)> {
    let v: serde_json::Value = serde_json::from_str(&c.kubectl_ok(&["get", "events", "-o", "json"])).unwrap_or_default();
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["involvedObject"]["name"] == pod && e["involvedObject"]["kind"] == "Pod")
        .map(|e| (e["reason"].as_str().unwrap_or("").to_string(), e["message"].as_str().unwrap_or("").to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduler_binds_fitting_nodes_reports_unschedulable_and_retries_when_a_node_appears() {
    let c = Cluster::up(3, common::NO_CONTROLLERS);
    c.wait_api();
    let cfg = config(&c).await;
    let task = start(cfg, fast("s1"));

    create(&c, &node_yaml("big", "4", "8Gi", ", disk: ssd", ""));
    create(&c, &node_yaml("small", "1", "1Gi", "", ""));
    create(&c, &node_yaml("gpu", "8", "16Gi", "", "{key: dedicated, value: gpu, effect: NoSchedule}"));

    // nodeSelector: only "big" has disk=ssd.
    create(&c, &pod_yaml("p-ssd", "100Mi", "  nodeSelector: {disk: ssd}\n"));
    // The tainted node, through a toleration and required node affinity.
    create(
        &c,
        &pod_yaml(
            "p-gpu",
            "100Mi",
            "  tolerations: [{key: dedicated, operator: Equal, value: gpu, effect: NoSchedule}]\n  affinity:\n    nodeAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n        nodeSelectorTerms: [{matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [gpu]}]}]\n",
        ),
    );
    // Resources: 6Gi fits only "big" among untainted nodes.
    create(&c, &pod_yaml("p-mem", "6Gi", ""));
    let long = Duration::from_secs(30);
    assert_eq!(wait_for("p-ssd bound", long, || node_of(&c, "p-ssd")).await, "big");
    assert_eq!(wait_for("p-gpu bound", long, || node_of(&c, "p-gpu")).await, "gpu");
    assert_eq!(wait_for("p-mem bound", long, || node_of(&c, "p-mem")).await, "big");
    assert_eq!(get(&c, &["get", "pod", "p-ssd", "-o", "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].status}"]), "True");
    let ev = wait_for("Scheduled event", long, || events(&c, "p-ssd").into_iter().find(|(r, _)| r == "Scheduled")).await;
    assert_eq!(ev.1, "Successfully assigned default/p-ssd to big");

    // 4Gi fits nowhere now: big has 8Gi - 6Gi - 100Mi left, small 1Gi, gpu is tainted.
    create(&c, &pod_yaml("p-huge", "4Gi", ""));
    let want = "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 2 Insufficient memory. \
                preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, 2 No preemption victims found for incoming pod.";
    let cond = wait_for("PodScheduled=False", long, || {
        let s = get(&c, &["get", "pod", "p-huge", "-o", "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")]}"]);
        let v: serde_json::Value = serde_json::from_str(&s).ok()?;
        (v["status"] == "False").then_some(v)
    })
    .await;
    assert_eq!(cond["reason"], "Unschedulable");
    assert_eq!(cond["message"], want);
    let ev = wait_for("FailedScheduling event", long, || events(&c, "p-huge").into_iter().find(|(r, _)| r == "FailedScheduling")).await;
    assert_eq!(ev.1, want);
    assert_eq!(node_of(&c, "p-huge"), None);

    // A fitting node appears: the pod is retried on that change, not by polling.
    create(&c, &node_yaml("roomy", "4", "32Gi", "", ""));
    assert_eq!(wait_for("p-huge bound after a node was added", long, || node_of(&c, "p-huge")).await, "roomy");
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_of_two_schedulers_leads_and_the_other_takes_over_when_it_stops() {
    let c = Cluster::up(3, common::NO_CONTROLLERS);
    c.wait_api();
    let cfg = config(&c).await;
    let a = start(cfg.clone(), fast("a"));
    let b = start(cfg, fast("b"));

    let first = wait_for("a lease holder", Duration::from_secs(30), || holder(&c)).await;
    assert!(first == "a" || first == "b", "holder {first}");
    // Both keep campaigning; the holder keeps renewing, so the lease does not move.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(holder(&c).as_deref(), Some(first.as_str()));
    assert_eq!(get(&c, &["get", "lease", "-n", "kube-system", "kuberaft-scheduler", "-o", "jsonpath={.spec.leaseTransitions}"]), "0");

    let (leader, other) = if first == "a" { (a, b) } else { (b, a) };
    let second = if first == "a" { "b" } else { "a" };
    leader.abort();
    let t = Instant::now();
    wait_for("the other scheduler to take over", Duration::from_secs(10), || (holder(&c).as_deref() == Some(second)).then_some(())).await;
    // lease_duration (3 s) + retry period + polling.
    assert!(t.elapsed() < Duration::from_secs(3 + 3), "takeover took {:?}", t.elapsed());
    assert_eq!(get(&c, &["get", "lease", "-n", "kube-system", "kuberaft-scheduler", "-o", "jsonpath={.spec.leaseTransitions}"]), "1");

    // The new leader schedules.
    create(&c, &node_yaml("n-a", "2", "2Gi", "", ""));
    create(&c, &pod_yaml("after-takeover", "100Mi", ""));
    assert_eq!(wait_for("pod bound by the new leader", Duration::from_secs(30), || node_of(&c, "after-takeover")).await, "n-a");
    other.abort();
}

/// Terms of an election run in the background: each start hands out the term's fenced client.
struct Terms {
    rx: tokio::sync::mpsc::UnboundedReceiver<(&'static str, Option<kube::Client>)>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Terms {
    fn run(cfg: kube::Config, e: ElectionConfig) -> Terms {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(sched::run_elected(cfg, e, move |client, mut lost| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(("term started", Some(client)));
                let _ = lost.wait_for(|l| *l).await;
                let _ = tx.send(("term ended", None));
                Ok(())
            }
        }));
        Terms { rx, task }
    }

    async fn next(&mut self) -> (Option<&'static str>, Option<kube::Client>) {
        match tokio::time::timeout(Duration::from_secs(30), self.rx.recv()).await.ok().flatten() {
            Some((what, client)) => (Some(what), client),
            None => (None, None),
        }
    }

    /// The next term's client, after the current term ended.
    async fn next_term(&mut self) -> kube::Client {
        assert_eq!(self.next().await.0, Some("term ended"));
        let (what, client) = self.next().await;
        assert_eq!(what, Some("term started"));
        client.expect("a client")
    }
}

impl Drop for Terms {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn config_map(name: &str) -> ConfigMap {
    ConfigMap { metadata: kube::api::ObjectMeta { name: Some(name.into()), ..Default::default() }, ..Default::default() }
}

async fn fenced_out(cms: &Api<ConfigMap>, name: &str) {
    match cms.create(&PostParams::default(), &config_map(name)).await {
        Err(kube::Error::Api(s)) => assert!(s.code == 409 && s.message.contains("fenced"), "{s:?}"),
        other => panic!("expected 409 fenced, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_fenced_as_the_old_holder_get_409_after_the_lease_moves() {
    let c = Cluster::up(3, common::NO_CONTROLLERS);
    c.wait_api();
    let mut terms = Terms::run(config(&c).await, fast_election("fence-test", "old"));
    let (what, client) = terms.next().await;
    assert_eq!(what, Some("term started"));
    let cms: Api<ConfigMap> = Api::namespaced(client.expect("fenced client"), "default");
    cms.create(&PostParams::default(), &config_map("while-leader")).await.expect("a write fenced as the holder succeeds");

    // The old holder stops renewing; someone else takes the lease.
    drop(terms);
    c.kubectl_ok(&["patch", "lease", "-n", "kube-system", "fence-test", "--type", "merge", "-p", r#"{"spec":{"holderIdentity":"new"}}"#]);
    fenced_out(&cms, "after-move").await;
    assert!(!c.kubectl(&["get", "configmap", "after-move"]).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_takes_its_lease_back_from_another_holder_starts_a_new_term() {
    let c = Cluster::up(3, common::NO_CONTROLLERS);
    c.wait_api();
    let mut terms = Terms::run(config(&c).await, fast_election("epoch-test", "one"));
    let (what, first) = terms.next().await;
    assert_eq!(what, Some("term started"));
    let old: Api<ConfigMap> = Api::namespaced(first.expect("a client"), "default");
    old.create(&PostParams::default(), &config_map("first-term")).await.expect("the first term writes");
    // Another holder had the Lease in between, and it has expired again by the time our next
    // renewal reads it (our renewals never saw it valid): the renewal takes it back, which
    // must not continue the old term.
    c.kubectl_ok(&["patch", "lease", "-n", "kube-system", "epoch-test", "--type", "merge", "-p", r#"{"spec":{"holderIdentity":"two","renewTime":"2020-01-01T00:00:00.000000Z","leaseDurationSeconds":1}}"#]);
    let new: Api<ConfigMap> = Api::namespaced(terms.next_term().await, "default");
    let holder = c.kubectl_ok(&["get", "lease", "-n", "kube-system", "epoch-test", "-o", "jsonpath={.spec.holderIdentity}/{.spec.leaseTransitions}"]);
    assert_eq!(holder, "one/1", "taking the Lease back counts a transition");
    // The same holder again, but a write of the old term (one still queued, say) must not commit.
    fenced_out(&old, "old-term-late").await;
    new.create(&PostParams::default(), &config_map("second-term")).await.expect("the new term writes");
    assert!(!c.kubectl(&["get", "configmap", "old-term-late"]).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_by_its_fence_ends_the_term() {
    let c = Cluster::up(3, common::NO_CONTROLLERS);
    c.wait_api();
    let mut terms = Terms::run(config(&c).await, fast_election("fenced-end", "one"));
    let (what, first) = terms.next().await;
    assert_eq!(what, Some("term started"));
    let old: Api<ConfigMap> = Api::namespaced(first.expect("a client"), "default");
    // The holder stays "one", so renewals keep succeeding and would never end the term; only
    // the fence (its epoch) moved, and the refused write must end it.
    c.kubectl_ok(&["patch", "lease", "-n", "kube-system", "fenced-end", "--type", "merge", "-p", r#"{"spec":{"leaseTransitions":7}}"#]);
    fenced_out(&old, "refused").await;
    let new: Api<ConfigMap> = Api::namespaced(terms.next_term().await, "default");
    new.create(&PostParams::default(), &config_map("next-term")).await.expect("the next term is fenced on the current epoch");
}

/// Nodes of `c` (name, zone) with zone labels.
fn zoned_nodes(c: &Cluster, nodes: &[(&str, &str)]) {
    for (n, z) in nodes {
        create(c, &node_yaml(n, "4", "8Gi", &format!(", topology.kubernetes.io/zone: {z}"), ""));
    }
}

fn bound_nodes(c: &Cluster, selector: &str) -> Vec<(String, String)> {
    let out = get(c, &["get", "pods", "-l", selector, "-o", "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName}{\"\\n\"}{end}"]);
    // A pending pod's line is "NAME " (no node), and `get` trims the output's end: when that
    // pod sorts last, its line has no space left.
    out.lines().filter(|l| !l.trim().is_empty()).map(|l| l.split_once(' ').unwrap_or((l, ""))).map(|(p, n)| (p.trim().to_string(), n.trim().to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn required_anti_affinity_puts_one_replica_per_node_and_spread_constraints_balance_zones() {
    // The replicas' own scheduler and controller manager (the binary under test).
    let c = Cluster::up(3, &[]);
    c.wait_api();
    zoned_nodes(&c, &[("a", "z1"), ("b", "z1"), ("c", "z2")]);
    let deployment = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 4
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector: {matchLabels: {app: web}}
            topologyKey: kubernetes.io/hostname
      containers:
      - {name: c, image: busybox, resources: {requests: {cpu: 100m, memory: 10Mi}}}
"#;
    create(&c, deployment);
    let long = Duration::from_secs(40);
    let last = std::cell::RefCell::new(Vec::new());
    let placed = wait_for("three web replicas bound", long, || {
        let b = bound_nodes(&c, "app=web");
        *last.borrow_mut() = b.clone();
        (b.len() == 4 && b.iter().filter(|(_, n)| !n.is_empty()).count() == 3).then_some(b)
    });
    let placed = match tokio::time::timeout(long + Duration::from_secs(1), std::panic::AssertUnwindSafe(placed).catch_unwind()).await {
        Ok(Ok(p)) => p,
        _ => panic!("three web replicas not bound; last seen: {:?}\n{}", last.borrow(), get(&c, &["get", "pods", "-o", "wide"])),
    };
    let mut nodes: Vec<&str> = placed.iter().map(|(_, n)| n.as_str()).filter(|n| !n.is_empty()).collect();
    nodes.sort();
    assert_eq!(nodes, ["a", "b", "c"], "one replica per node: {placed:?}");
    let (pending, _) = placed.iter().find(|(_, n)| n.is_empty()).expect("a pending replica");
    let want = "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules. \
                preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.";
    let ev = wait_for("FailedScheduling of the fourth replica", long, || events(&c, pending).into_iter().find(|(r, _)| r == "FailedScheduling")).await;
    assert_eq!(ev.1, want);

    // Six pods spread over the zones with maxSkew 1: z1 (two nodes) and z2 (one) get three each.
    for i in 0..6 {
        create(
            &c,
            &pod_yaml(
                &format!("s{i}"),
                "10Mi",
                "  topologySpreadConstraints:\n  - {maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: spread}}}\n",
            )
            .replace("metadata:\n  name:", "metadata:\n  labels: {app: spread}\n  name:"),
        );
    }
    let placed = wait_for("six spread pods bound", long, || {
        let b = bound_nodes(&c, "app=spread");
        (b.len() == 6 && b.iter().all(|(_, n)| !n.is_empty())).then_some(b)
    })
    .await;
    let z2 = placed.iter().filter(|(_, n)| n == "c").count();
    assert_eq!(z2, 3, "zones balanced: {placed:?}");

    // Pods that may only go to z1, counting z2 too (nodeAffinityPolicy Ignore): the first makes
    // it 4 to 3; the next would make the skew 2 and stays pending.
    let z1_only = |name: &str| {
        pod_yaml(
            name,
            "10Mi",
            "  nodeSelector: {topology.kubernetes.io/zone: z1}\n  topologySpreadConstraints:\n  - {maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: DoNotSchedule, nodeAffinityPolicy: Ignore, labelSelector: {matchLabels: {app: spread}}}\n",
        )
        .replace("metadata:\n  name:", "metadata:\n  labels: {app: spread}\n  name:")
    };
    create(&c, &z1_only("z1-a"));
    let n = wait_for("z1-a bound", long, || node_of(&c, "z1-a")).await;
    assert!(n == "a" || n == "b", "{n}");
    create(&c, &z1_only("z1-b"));
    let ev = wait_for("FailedScheduling of z1-b", long, || events(&c, "z1-b").into_iter().find(|(r, _)| r == "FailedScheduling")).await;
    assert_eq!(
        ev.1,
        "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 2 node(s) didn't match pod topology spread constraints. \
         preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, 2 No preemption victims found for incoming pod."
    );
}

/// Hollow nodes in their own runtime (they confirm graceful deletions, which preemption needs).
struct Hollow {
    _rt: tokio::runtime::Runtime,
    _task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Hollow {
    fn start(c: &Cluster, flags: &[&str]) -> Hollow {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let kubeconfig = c.path().join("n1").join("kubeconfig");
        let config = rt.block_on(async {
            let kc = kube::config::Kubeconfig::read_from(&kubeconfig).expect("kubeconfig");
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.expect("config")
        });
        let mut all = vec!["--hollow", "--kubeconfig", kubeconfig.to_str().expect("utf-8 path")];
        all.extend_from_slice(flags);
        let args = node::NodeArgs::from_flags(all).expect("flags");
        let task = rt.spawn(node::run_hollow(config, args));
        Hollow { _rt: rt, _task: task }
    }
}

fn wait_sync<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A pod of PriorityClass `class` (Priority admission turns it into spec.priority).
fn prio_pod(name: &str, class: &str) -> String {
    pod_yaml(name, "10Mi", &format!("  priorityClassName: {class}\n")).replace("cpu: 100m", "cpu: 1500m")
}

#[test]
fn a_higher_priority_pod_preempts_a_lower_one_and_preemption_policy_never_waits() {
    let c = Cluster::up(3, &[]);
    c.wait_api();
    let _nodes = Hollow::start(&c, &["--name", "pre", "--cpu", "2"]);
    let long = Duration::from_secs(40);
    wait_sync("node pre Ready", long, || (get(&c, &["get", "node", "pre", "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}"]) == "True").then_some(()));

    for (class, value, policy) in [("low", 0, "PreemptLowerPriority"), ("high", 1000, "PreemptLowerPriority"), ("polite", 2000, "Never")] {
        create(&c, &format!("apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {{name: {class}}}\nvalue: {value}\npreemptionPolicy: {policy}\n"));
    }
    create(&c, &prio_pod("low", "low"));
    assert_eq!(wait_sync("low bound", long, || node_of(&c, "low")), "pre");
    let low_uid = get(&c, &["get", "pod", "low", "-o", "jsonpath={.metadata.uid}"]);

    create(&c, &prio_pod("high", "high"));
    let high_uid = get(&c, &["get", "pod", "high", "-o", "jsonpath={.metadata.uid}"]);
    assert_eq!(wait_sync("high bound after preemption", long, || node_of(&c, "high")), "pre");
    assert_eq!(get(&c, &["get", "pod", "high", "-o", "jsonpath={.status.nominatedNodeName}"]), "pre");
    // The victim is gone (or a replacement with another UID, which nothing creates here).
    wait_sync("low deleted", long, || {
        let uid = get(&c, &["get", "pod", "low", "--ignore-not-found", "-o", "jsonpath={.metadata.uid}"]);
        (uid != low_uid).then_some(())
    });
    let ev = wait_sync("Preempted event", long, || events(&c, "low").into_iter().find(|(r, _)| r == "Preempted"));
    assert_eq!(ev.1, format!("Preempted by pod {high_uid} on node pre"));
    let failed: Vec<String> = events(&c, "high").into_iter().filter(|(r, _)| r == "FailedScheduling").map(|(_, m)| m).collect();
    assert!(failed.iter().any(|m| m == "0/1 nodes are available: 1 Insufficient cpu."), "{failed:?}");

    // preemptionPolicy Never: it waits, even with a higher priority.
    create(&c, &prio_pod("polite", "polite"));
    let ev = wait_sync("FailedScheduling of polite", long, || events(&c, "polite").into_iter().find(|(r, _)| r == "FailedScheduling"));
    assert_eq!(ev.1, "0/1 nodes are available: 1 Insufficient cpu. preemption: not eligible due to preemptionPolicy=Never.");
    assert_eq!(node_of(&c, "high").as_deref(), Some("pre"));
    assert_eq!(node_of(&c, "polite"), None);
}

#[test]
fn claims_missing_unbound_immediate_or_waiting_for_first_consumer() {
    let c = Cluster::up(3, &[]);
    c.wait_api();
    create(&c, &node_yaml("only", "4", "8Gi", "", ""));
    let long = Duration::from_secs(40);
    let with_claim = |pod: &str, claim: &str| pod_yaml(pod, "10Mi", &format!("  volumes:\n  - name: data\n    persistentVolumeClaim: {{claimName: {claim}}}\n"));
    let failed = |pod: &str| wait_sync(&format!("FailedScheduling of {pod}"), long, || events(&c, pod).into_iter().find(|(r, _)| r == "FailedScheduling").map(|(_, m)| m));

    create(&c, &with_claim("no-claim", "missing"));
    assert_eq!(
        failed("no-claim"),
        "0/1 nodes are available: persistentvolumeclaim \"missing\" not found. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
    );

    let claim = |name: &str, class: &str| format!("apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: {name}}}\nspec:\n  accessModes: [ReadWriteOnce]\n  storageClassName: {class}\n  resources: {{requests: {{storage: 1Gi}}}}\n");
    create(&c, "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: slow}\nprovisioner: example.com/none\nvolumeBindingMode: Immediate\n");
    create(&c, "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: wait}\nprovisioner: example.com/none\nvolumeBindingMode: WaitForFirstConsumer\n");
    create(&c, &claim("imm", "slow"));
    create(&c, &with_claim("immediate", "imm"));
    assert_eq!(
        failed("immediate"),
        "0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
    );

    // WaitForFirstConsumer: the claim learns the chosen node; the pod waits for the binding.
    create(&c, &claim("later", "wait"));
    create(&c, &with_claim("consumer", "later"));
    let selected = wait_sync("selected-node annotation", long, || {
        Some(get(&c, &["get", "pvc", "later", "-o", "jsonpath={.metadata.annotations.volume\\.kubernetes\\.io/selected-node}"])).filter(|s| !s.is_empty())
    });
    assert_eq!(selected, "only");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(node_of(&c, "consumer"), None, "not bound before its claim is");
    // What a provisioner does: a volume on that node, bound to the claim.
    create(
        &c,
        "apiVersion: v1\nkind: PersistentVolume\nmetadata: {name: pv-later}\nspec:\n  capacity: {storage: 1Gi}\n  accessModes: [ReadWriteOnce]\n  storageClassName: wait\n  hostPath: {path: /tmp/x}\n  claimRef: {namespace: default, name: later}\n  nodeAffinity:\n    required:\n      nodeSelectorTerms: [{matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [only]}]}]\n",
    );
    c.kubectl_ok(&["patch", "pvc", "later", "--type", "merge", "-p", r#"{"spec":{"volumeName":"pv-later"}}"#]);
    assert_eq!(wait_sync("consumer bound once its claim is", long, || node_of(&c, "consumer")), "only");
}
