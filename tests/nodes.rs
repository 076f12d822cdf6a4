//! The node controllers against three replicas and hollow node processes (`kuberaft node
//! --hollow` children; killing one stops its heartbeats): node lifecycle (Unknown conditions,
//! unreachable taints, pods marked not ready, recovery), taint eviction (at once, after
//! tolerationSeconds, never), node IPAM (a distinct podCIDR per node), cordon's taint and pod GC
//! of a deleted node's pods.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{eventually, Cluster, KillOnDrop};

/// Short grace periods so a dead node is noticed in seconds.
const FLAGS: &[&str] = &[
    "--node-monitor-grace-period",
    "4s",
    "--node-monitor-period",
    "500ms",
    "--node-eviction-rate",
    "10",
    "--allocate-node-cidrs",
    "--pod-gc-orphan-quarantine",
    "2",
];

fn hollow(c: &Cluster, name: &str, count: usize) -> KillOnDrop {
    let kubeconfig = c.path().join("n1").join("kubeconfig");
    let log = std::fs::File::create(c.path().join(format!("hollow-{name}.log"))).expect("log file");
    let child = Command::new(common::kuberaft_bin())
        .args(["node", "--hollow", "--hollow-count", &count.to_string(), "--name", name, "--heartbeat-seconds", "1", "--kubeconfig"])
        .arg(&kubeconfig)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("hollow node process");
    KillOnDrop(child)
}

fn json(c: &Cluster, args: &[&str]) -> Result<serde_json::Value, String> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = c.kubectl(&all);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

fn ready(v: &serde_json::Value) -> String {
    v["status"]["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == "Ready").map(|c| c["status"].as_str().unwrap_or("").to_string()).unwrap_or_default()
}

fn node_taints(c: &Cluster, node: &str) -> Result<Vec<serde_json::Value>, String> {
    Ok(json(c, &["get", "node", node])?["spec"]["taints"].as_array().cloned().unwrap_or_default())
}

fn has_taint(taints: &[serde_json::Value], key: &str, effect: &str) -> bool {
    taints.iter().any(|t| t["key"] == key && t["effect"] == effect)
}

fn wait_ready(c: &Cluster, nodes: &[&str]) {
    for n in nodes {
        eventually(&format!("node {n} Ready"), Duration::from_secs(30), || {
            let v = json(c, &["get", "node", n])?;
            if ready(&v) == "True" { Ok(()) } else { Err(v["status"].to_string()) }
        });
    }
}

/// A pod bound to `node` directly, with `tolerations` (YAML flow list).
fn pod(c: &Cluster, name: &str, node: &str, tolerations: &str) {
    let yaml = format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {node}\n  tolerations: {tolerations}\n  containers: [{{name: c, image: nginx}}]\n");
    c.kubectl_ok(&["apply", "-f", &c.file(&format!("{name}.yaml"), &yaml)]);
}

fn wait_pods_ready(c: &Cluster, pods: &[&str]) {
    for p in pods {
        c.kubectl_ok(&["wait", "--for=condition=Ready", &format!("pod/{p}"), "--timeout=30s"]);
    }
}

fn terminating(c: &Cluster, name: &str) -> Result<bool, String> {
    match json(c, &["get", "pod", name]) {
        Ok(v) => Ok(v["metadata"]["deletionTimestamp"].is_string()),
        Err(e) if e.contains("NotFound") => Ok(true),
        Err(e) => Err(e),
    }
}

fn gone(c: &Cluster, name: &str) -> Result<(), String> {
    match json(c, &["get", "pod", name]) {
        Ok(v) => Err(format!("still there: {}", v["metadata"])),
        Err(e) if e.contains("NotFound") => Ok(()),
        Err(e) => Err(e),
    }
}

/// "reason: message" lines of the Events about one object (namespace default).
fn events_of(c: &Cluster, kind: &str, name: &str) -> String {
    let v = json(c, &["get", "events"]).expect("events");
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["involvedObject"]["kind"] == kind && e["involvedObject"]["name"] == name)
        .map(|e| format!("{}: {}\n", e["reason"].as_str().unwrap_or(""), e["message"].as_str().unwrap_or("")))
        .collect()
}

fn ts(s: &str) -> k8s_openapi::jiff::Timestamp {
    s.parse().unwrap_or_else(|e| panic!("timestamp {s:?}: {e}"))
}

#[test]
fn unreachable_node_is_tainted_its_pods_evicted_and_it_recovers() {
    let c = Cluster::up(3, FLAGS);
    c.wait_api();
    // One process keeps a node alive (else the whole cluster looks down and nothing is evicted).
    let _stay = hollow(&c, "stay", 1);
    let mut lost = hollow(&c, "lost", 2);
    wait_ready(&c, &["stay", "lost-0", "lost-1"]);

    // Each node gets its own pod CIDR from 10.244.0.0/16.
    let cidrs = eventually("pod CIDRs", Duration::from_secs(20), || {
        let out = c.kubectl_ok(&["get", "nodes", "-o", r#"jsonpath={range .items[*]}{.metadata.name}={.spec.podCIDR},{.spec.podCIDRs[0]}{"\n"}{end}"#]);
        let rows: Vec<(String, String)> = out.lines().filter_map(|l| l.split_once('=')).map(|(n, c)| (n.to_string(), c.to_string())).collect();
        if rows.len() == 3 && rows.iter().all(|(_, c)| c.starts_with("10.244.") && c.contains("/24,10.244.")) { Ok(rows) } else { Err(out) }
    });
    let mut distinct: Vec<&str> = cidrs.iter().map(|(_, c)| c.split(',').next().unwrap_or("")).collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{cidrs:?}");

    let unreachable_for = |secs: Option<u32>| match secs {
        Some(s) => format!("[{{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: {s}}}]"),
        None => "[{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute}]".to_string(),
    };
    // Pods tolerate an unreachable node for 300 s by default (DefaultTolerationSeconds), so the
    // pod evicted at once says it tolerates it for 0 s.
    pod(&c, "plain", "lost-0", &unreachable_for(Some(0)));
    pod(&c, "defaulted", "lost-0", "[]");
    let dflt = c.kubectl_ok(&["get", "pod", "defaulted", "-o", r#"jsonpath={range .spec.tolerations[*]}{.key}:{.effect}:{.tolerationSeconds} {end}"#]);
    assert_eq!(dflt.trim(), "node.kubernetes.io/not-ready:NoExecute:300 node.kubernetes.io/unreachable:NoExecute:300");
    pod(&c, "patient", "lost-0", &unreachable_for(Some(8)));
    pod(&c, "forever", "lost-0", &unreachable_for(None));
    pod(&c, "orphan", "lost-1", "[{operator: Exists}]");
    wait_pods_ready(&c, &["plain", "patient", "forever", "orphan"]);
    // Hollow nodes take pod IPs from their node's podCIDR.
    let lost0 = cidrs.iter().find(|(n, _)| n == "lost-0").map(|(_, c)| c.split(".0/24").next().unwrap_or("").to_string()).unwrap_or_default();
    let ip = c.kubectl_ok(&["get", "pod", "forever", "-o", "jsonpath={.status.podIP}"]);
    assert!(ip.starts_with(&format!("{lost0}.")), "pod IP {ip} not in lost-0's podCIDR {lost0}.0/24");

    // The node process dies: no more Lease renewals.
    let _ = lost.0.kill();
    let _ = lost.0.wait();
    let killed = Instant::now();
    let node = eventually("lost-0 Unknown", Duration::from_secs(20), || {
        let v = json(&c, &["get", "node", "lost-0"])?;
        if ready(&v) == "Unknown" { Ok(v) } else { Err(v["status"]["conditions"].to_string()) }
    });
    assert!(killed.elapsed() >= Duration::from_secs(3), "marked Unknown after {:?}, before the 4 s grace period", killed.elapsed());
    let cond = node["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap().clone();
    assert_eq!((cond["reason"].as_str(), cond["message"].as_str()), (Some("NodeStatusUnknown"), Some("Kubelet stopped posting node status.")), "{cond}");
    let line = c.kubectl_ok(&["get", "node", "lost-0", "--no-headers"]);
    assert!(line.split_whitespace().nth(1) == Some("NotReady"), "{line}");

    let taints = eventually("unreachable taints", Duration::from_secs(15), || {
        let t = node_taints(&c, "lost-0")?;
        if has_taint(&t, "node.kubernetes.io/unreachable", "NoExecute") && has_taint(&t, "node.kubernetes.io/unreachable", "NoSchedule") { Ok(t) } else { Err(format!("{t:?}")) }
    });
    let seen = Instant::now();
    let noexec = taints.iter().find(|t| t["key"] == "node.kubernetes.io/unreachable" && t["effect"] == "NoExecute").unwrap();
    let added = ts(noexec["timeAdded"].as_str().expect("timeAdded"));
    assert!(!has_taint(&node_taints(&c, "stay").unwrap(), "node.kubernetes.io/unreachable", "NoExecute"), "the live node is not tainted");

    // Untolerating pod: deleted at once, with the DisruptionTarget condition first.
    eventually("plain evicted", Duration::from_secs(10), || if terminating(&c, "plain")? { Ok(()) } else { Err("not yet".into()) });
    let plain = json(&c, &["get", "pod", "plain"]).expect("plain is Terminating (its node is down)");
    let dt = plain["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "DisruptionTarget").cloned().unwrap_or_default();
    assert_eq!((dt["status"].as_str(), dt["reason"].as_str()), (Some("True"), Some("DeletionByTaintManager")), "{}", plain["status"]);
    let events = events_of(&c, "Pod", "plain");
    assert!(events.contains("TaintManagerEviction") && events.contains("Marking for deletion Pod default/plain"), "{events}");
    assert!(events.contains("NodeNotReady"), "pods get the NodeNotReady event: {events}");

    // Pods on the node are not Ready any more.
    eventually("forever not ready", Duration::from_secs(10), || {
        let v = json(&c, &["get", "pod", "forever"])?;
        if ready(&v) == "False" { Ok(()) } else { Err(v["status"]["conditions"].to_string()) }
    });
    let node_events = events_of(&c, "Node", "lost-0");
    assert!(node_events.contains("Node lost-0 status is now: NodeNotReady"), "{node_events}");
    assert!(node_events.contains("Node lost-0 event: Registered Node lost-0 in Controller"), "{node_events}");

    // tolerationSeconds 8: still there up to 7 s after the taint's timeAdded (when this test got
    // to look in time: a loaded machine may have seen the taint late), gone within 8 s of it
    // (plus slack); the DisruptionTarget time below checks the lower bound in any case.
    std::thread::sleep(Duration::from_secs(6).saturating_sub(seen.elapsed()));
    let patient_alive = !terminating(&c, "patient").unwrap();
    let since_added = k8s_openapi::jiff::Timestamp::now().as_second() - added.as_second();
    assert!(patient_alive || since_added >= 7, "patient evicted {since_added} s after the taint was added, before its tolerationSeconds ran out");
    eventually("patient evicted", Duration::from_secs(15), || if terminating(&c, "patient")? { Ok(()) } else { Err("not yet".into()) });
    let patient = json(&c, &["get", "pod", "patient"]).expect("patient");
    let dt = patient["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "DisruptionTarget").cloned().unwrap_or_default();
    let evicted_at = ts(dt["lastTransitionTime"].as_str().expect("DisruptionTarget time"));
    let waited = evicted_at.as_second() - added.as_second();
    assert!((8..=12).contains(&waited), "evicted {waited} s after the taint was added (tolerationSeconds 8)");
    // Tolerated without a limit, or for the default 300 s: stays.
    assert!(!terminating(&c, "forever").unwrap());
    assert!(!terminating(&c, "defaulted").unwrap());

    // Pod GC: the other node is deleted; its pod (which tolerates everything) is force-deleted.
    c.kubectl_ok(&["delete", "node", "lost-1"]);
    eventually("orphan collected", Duration::from_secs(20), || gone(&c, "orphan"));

    // The node comes back: Ready, taints gone, its pods Ready again; the Terminating ones finish.
    let _back = hollow(&c, "lost", 2);
    wait_ready(&c, &["lost-0"]);
    eventually("taints removed", Duration::from_secs(15), || {
        let t = node_taints(&c, "lost-0")?;
        if t.iter().any(|t| t["key"].as_str().unwrap_or("").starts_with("node.kubernetes.io/")) { Err(format!("{t:?}")) } else { Ok(()) }
    });
    c.kubectl_ok(&["wait", "--for=condition=Ready", "pod/forever", "--timeout=20s"]);
    eventually("plain gone", Duration::from_secs(15), || gone(&c, "plain"));
    eventually("patient gone", Duration::from_secs(15), || gone(&c, "patient"));
    assert!(!terminating(&c, "forever").unwrap());
}

#[test]
fn noexecute_taint_on_a_live_node_and_cordon() {
    let c = Cluster::up(3, FLAGS);
    c.wait_api();
    let _n = hollow(&c, "live", 1);
    wait_ready(&c, &["live"]);
    pod(&c, "plain", "live", "[]");
    pod(&c, "brief", "live", "[{key: dedicated, operator: Equal, value: a, effect: NoExecute, tolerationSeconds: 5}]");
    pod(&c, "long", "live", "[{key: dedicated, operator: Exists, effect: NoExecute, tolerationSeconds: 60}]");
    pod(&c, "always", "live", "[{key: dedicated, operator: Exists}]");
    wait_pods_ready(&c, &["plain", "brief", "long", "always"]);

    let asked = Instant::now();
    c.kubectl_ok(&["taint", "nodes", "live", "dedicated=a:NoExecute"]);
    let tainted = Instant::now();
    eventually("plain gone", Duration::from_secs(10), || gone(&c, "plain"));
    std::thread::sleep(Duration::from_secs(3).saturating_sub(tainted.elapsed()));
    // Early only if the taint (set after `asked`) is less than 5 s old now.
    let brief_alive = !terminating(&c, "brief").unwrap();
    assert!(brief_alive || asked.elapsed() >= Duration::from_secs(5), "brief evicted {:?} after the taint, before 5 s", asked.elapsed());
    eventually("brief gone", Duration::from_secs(15), || gone(&c, "brief"));
    assert!(tainted.elapsed() >= Duration::from_secs(4), "brief gone after {:?}", tainted.elapsed());

    // The taint goes before "long" runs out: its eviction is cancelled.
    c.kubectl_ok(&["taint", "nodes", "live", "dedicated=a:NoExecute-"]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(!terminating(&c, "long").unwrap());
    assert!(!terminating(&c, "always").unwrap());
    let events = events_of(&c, "Pod", "long");
    assert!(events.contains("Cancelling deletion of Pod default/long"), "{events}");

    // Cordon: the unschedulable taint mirrors spec.unschedulable.
    c.kubectl_ok(&["cordon", "live"]);
    eventually("unschedulable taint", Duration::from_secs(10), || {
        let t = node_taints(&c, "live")?;
        if has_taint(&t, "node.kubernetes.io/unschedulable", "NoSchedule") { Ok(()) } else { Err(format!("{t:?}")) }
    });
    c.kubectl_ok(&["uncordon", "live"]);
    eventually("unschedulable taint removed", Duration::from_secs(10), || {
        let t = node_taints(&c, "live")?;
        if has_taint(&t, "node.kubernetes.io/unschedulable", "NoSchedule") { Err(format!("{t:?}")) } else { Ok(()) }
    });
}

#[test]
fn whole_cluster_down_evicts_nothing() {
    let c = Cluster::up(3, FLAGS);
    c.wait_api();
    // One node: it going down is the whole cluster going down.
    let mut all = hollow(&c, "all", 1);
    wait_ready(&c, &["all"]);
    pod(&c, "p", "all", "[]");
    wait_pods_ready(&c, &["p"]);
    let _ = all.0.kill();
    let _ = all.0.wait();
    eventually("all Unknown", Duration::from_secs(20), || {
        let v = json(&c, &["get", "node", "all"])?;
        if ready(&v) == "Unknown" { Ok(()) } else { Err(v["status"]["conditions"].to_string()) }
    });
    // Every node is down: more likely our own network than all nodes at once. No NoExecute
    // taints, no evictions (the NoSchedule taints still follow the condition).
    std::thread::sleep(Duration::from_secs(4));
    let t = node_taints(&c, "all").unwrap();
    assert!(!has_taint(&t, "node.kubernetes.io/unreachable", "NoExecute"), "{t:?}");
    assert!(has_taint(&t, "node.kubernetes.io/unreachable", "NoSchedule"), "{t:?}");
    assert!(!terminating(&c, "p").unwrap());
}

#[test]
fn pod_cidrs_run_out_and_are_released_with_their_node() {
    // Room for two /24s only.
    let c = Cluster::up(3, &["--allocate-node-cidrs", "--cluster-cidr", "10.99.0.0/23", "--node-cidr-mask-size", "24"]);
    c.wait_api();
    let cidr = |n: &str| c.kubectl_ok(&["get", "node", n, "-o", "jsonpath={.spec.podCIDR}"]);
    for n in ["a", "b"] {
        c.kubectl_ok(&["apply", "-f", &c.file(&format!("{n}.yaml"), &format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {n}}}\n"))]);
        eventually(&format!("{n} has a pod CIDR"), Duration::from_secs(10), || if cidr(n).is_empty() { Err("none".into()) } else { Ok(()) });
    }
    let mut got = vec![cidr("a"), cidr("b")];
    got.sort();
    assert_eq!(got, ["10.99.0.0/24", "10.99.1.0/24"]);
    c.kubectl_ok(&["apply", "-f", &c.file("c.yaml", "apiVersion: v1\nkind: Node\nmetadata: {name: c}\n")]);
    eventually("CIDRNotAvailable", Duration::from_secs(10), || {
        let ev = events_of(&c, "Node", "c");
        if ev.contains("CIDRNotAvailable: Node c status is now: CIDRNotAvailable") { Ok(()) } else { Err(ev) }
    });
    assert_eq!(cidr("c"), "");
    // a's subnet goes to c once a is gone.
    let freed = cidr("a");
    c.kubectl_ok(&["delete", "node", "a"]);
    eventually("c gets a's CIDR", Duration::from_secs(15), || {
        let got = cidr("c");
        if got == freed { Ok(()) } else { Err(got) }
    });
    assert_ne!(cidr("b"), freed);
}
