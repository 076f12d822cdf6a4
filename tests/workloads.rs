//! DaemonSets and StatefulSets end to end: three replicas (which run the scheduler and the
//! controller manager themselves), hollow nodes in this process, kubectl as a user drives it.

mod common;

use std::time::{Duration, Instant};

use common::Cluster;

/// Hollow nodes in a runtime of their own; dropping it stops them (their Nodes stay).
struct Hollow {
    rt: Option<tokio::runtime::Runtime>,
}

impl Hollow {
    fn start(c: &Cluster, flags: &[&str]) -> Hollow {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let kubeconfig = c.path().join("n1").join("kubeconfig");
        let config = rt.block_on(async {
            let kc = kube::config::Kubeconfig::read_from(&kubeconfig).expect("kubeconfig");
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.expect("config")
        });
        let mut all = vec!["--hollow", "--kubeconfig", kubeconfig.to_str().expect("utf-8 path"), "--heartbeat-seconds", "2"];
        all.extend_from_slice(flags);
        let args = node::NodeArgs::from_flags(all).expect("flags");
        rt.spawn(async move {
            if let Err(e) = node::run_hollow(config, args).await {
                eprintln!("hollow nodes stopped: {e:#}");
            }
        });
        Hollow { rt: Some(rt) }
    }
}

impl Drop for Hollow {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<(), String>) {
    let t = Instant::now();
    loop {
        match f() {
            Ok(()) => return,
            Err(last) if t.elapsed() > timeout => panic!("timed out after {timeout:?} waiting for {what}; last: {last}"),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

fn get(c: &Cluster, args: &[&str]) -> String {
    String::from_utf8_lossy(&c.kubectl(args).stdout).trim().to_string()
}

fn expect_eq(have: String, want: &str) -> Result<(), String> {
    if have == want { Ok(()) } else { Err(format!("have {have:?}, want {want:?}")) }
}

/// `node=pod-phase` lines, sorted, of the live pods with `selector`.
fn pods_by_node(c: &Cluster, selector: &str) -> String {
    let t = r#"{range .items[*]}{.spec.nodeName}={.status.phase}{.metadata.deletionTimestamp}{"\n"}{end}"#;
    let out = get(c, &["get", "pods", "-l", selector, "-o", &format!("jsonpath={t}")]);
    let mut v: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    v.sort();
    v.join(" ")
}

fn wait_nodes(c: &Cluster, n: usize) {
    wait_for(&format!("{n} Ready nodes"), Duration::from_secs(30), || {
        let out = get(c, &["get", "nodes", "--no-headers"]);
        let ready = out.lines().filter(|l| l.split_whitespace().nth(1) == Some("Ready")).count();
        if ready == n { Ok(()) } else { Err(out) }
    });
}

fn ds_yaml(name: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: {name}\nspec:\n  selector:\n    matchLabels:\n      app: {name}\n  template:\n    metadata:\n      labels:\n        app: {name}\n    spec:\n{extra_spec}      containers:\n      - name: c\n        image: nginx:1\n"
    )
}

#[test]
fn daemonset_follows_nodes_taints_and_selectors() {
    let c = Cluster::up(3, &[]);
    c.wait_api();
    let _a = Hollow::start(&c, &["--name", "a", "--hollow-count", "2"]);
    wait_nodes(&c, 2);
    c.kubectl_ok(&["apply", "-f", &c.file("ds.yaml", &ds_yaml("agent", ""))]);
    wait_for("a running pod per node", Duration::from_secs(30), || expect_eq(pods_by_node(&c, "app=agent"), "a-0=Running a-1=Running"));
    wait_for("status", Duration::from_secs(15), || expect_eq(get(&c, &["get", "ds", "agent", "-o", "jsonpath={.status.desiredNumberScheduled} {.status.currentNumberScheduled} {.status.numberReady} {.status.numberAvailable} {.status.updatedNumberScheduled}"]), "2 2 2 2 2"));
    let cols: Vec<String> = get(&c, &["get", "ds", "agent", "--no-headers"]).split_whitespace().map(str::to_string).collect();
    assert_eq!(cols[..6], ["agent", "2", "2", "2", "2", "2"], "{cols:?}");

    // Placement as upstream: pinned by matchFields, default tolerations, revision hash label.
    let pod = get(&c, &["get", "pods", "-l", "app=agent", "-o", "jsonpath={.items[0]}"]);
    let pod: serde_json::Value = serde_json::from_str(&pod).expect("pod json");
    let term = &pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchFields"][0];
    assert_eq!(term["key"], "metadata.name");
    assert_eq!(term["values"][0], pod["spec"]["nodeName"]);
    let tols: Vec<String> = pod["spec"]["tolerations"].as_array().expect("tolerations").iter().map(|t| format!("{}:{}", t["key"].as_str().unwrap_or(""), t["effect"].as_str().unwrap_or(""))).collect();
    for want in ["node.kubernetes.io/not-ready:NoExecute", "node.kubernetes.io/unreachable:NoExecute", "node.kubernetes.io/disk-pressure:NoSchedule", "node.kubernetes.io/memory-pressure:NoSchedule", "node.kubernetes.io/pid-pressure:NoSchedule", "node.kubernetes.io/unschedulable:NoSchedule"] {
        assert!(tols.contains(&want.to_string()), "{want} missing from {tols:?}");
    }
    assert!(pod["metadata"]["labels"]["controller-revision-hash"].as_str().is_some_and(|h| !h.is_empty()), "{pod}");
    let events = get(&c, &["get", "events", "--field-selector", "involvedObject.kind=DaemonSet,reason=SuccessfulCreate", "-o", "jsonpath={.items[*].message}"]);
    assert!(events.contains("Created pod: agent-"), "{events}");

    // A new node gets a pod; a removed one loses it.
    let b = Hollow::start(&c, &["--name", "b", "--hollow-count", "1"]);
    wait_nodes(&c, 3);
    wait_for("a pod on the new node", Duration::from_secs(30), || expect_eq(pods_by_node(&c, "app=agent"), "a-0=Running a-1=Running b=Running"));
    drop(b);
    c.kubectl_ok(&["delete", "node", "b"]);
    wait_for("no pod for the deleted node", Duration::from_secs(30), || expect_eq(pods_by_node(&c, "app=agent"), "a-0=Running a-1=Running"));
    wait_for("desired back to 2", Duration::from_secs(15), || expect_eq(get(&c, &["get", "ds", "agent", "-o", "jsonpath={.status.desiredNumberScheduled}"]), "2"));

    // NoSchedule: the pod there stays (misscheduled), but is not replaced once deleted.
    c.kubectl_ok(&["taint", "nodes", "a-1", "k=v:NoSchedule"]);
    wait_for("misscheduled 1", Duration::from_secs(15), || expect_eq(get(&c, &["get", "ds", "agent", "-o", "jsonpath={.status.desiredNumberScheduled} {.status.numberMisscheduled}"]), "1 1"));
    let on_a1 = get(&c, &["get", "pods", "-l", "app=agent", "--field-selector", "spec.nodeName=a-1", "-o", "jsonpath={.items[0].metadata.name}"]);
    c.kubectl_ok(&["delete", "pod", &on_a1, "--wait=true"]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(pods_by_node(&c, "app=agent"), "a-0=Running");
    c.kubectl_ok(&["taint", "nodes", "a-1", "k=v:NoSchedule-"]);
    wait_for("the pod back once the taint is gone", Duration::from_secs(30), || expect_eq(pods_by_node(&c, "app=agent"), "a-0=Running a-1=Running"));

    // NoExecute that the pod does not tolerate: the pod goes and is not recreated.
    c.kubectl_ok(&["taint", "nodes", "a-0", "evict=now:NoExecute"]);
    wait_for("the pod evicted from a-0", Duration::from_secs(30), || expect_eq(pods_by_node(&c, "app=agent"), "a-1=Running"));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(pods_by_node(&c, "app=agent"), "a-1=Running");
    c.kubectl_ok(&["taint", "nodes", "a-0", "evict=now:NoExecute-"]);
    wait_for("the pod back on a-0", Duration::from_secs(30), || expect_eq(pods_by_node(&c, "app=agent"), "a-0=Running a-1=Running"));

    // A nodeSelector follows node labels both ways.
    c.kubectl_ok(&["label", "node", "a-0", "pick=yes"]);
    c.kubectl_ok(&["apply", "-f", &c.file("sel.yaml", &ds_yaml("picky", "      nodeSelector:\n        pick: \"yes\"\n"))]);
    wait_for("a pod on the labelled node only", Duration::from_secs(30), || expect_eq(pods_by_node(&c, "app=picky"), "a-0=Running"));
    c.kubectl_ok(&["label", "node", "a-1", "pick=yes"]);
    wait_for("a pod on the newly labelled node", Duration::from_secs(30), || expect_eq(pods_by_node(&c, "app=picky"), "a-0=Running a-1=Running"));
    c.kubectl_ok(&["label", "node", "a-0", "pick-"]);
    wait_for("the pod gone from the unlabelled node", Duration::from_secs(30), || expect_eq(pods_by_node(&c, "app=picky"), "a-1=Running"));

    // Deleting the DaemonSet takes its pods along (garbage collector).
    c.kubectl_ok(&["delete", "ds", "picky"]);
    wait_for("picky pods gone", Duration::from_secs(30), || expect_eq(pods_by_node(&c, "app=picky"), ""));
}

#[test]
fn daemonset_rolls_out_updates_and_rolls_back() {
    let c = Cluster::up(3, &[]);
    c.wait_api();
    let _a = Hollow::start(&c, &["--name", "r", "--hollow-count", "3"]);
    wait_nodes(&c, 3);
    c.kubectl_ok(&["apply", "-f", &c.file("ds.yaml", &ds_yaml("roll", ""))]);
    let st = c.kubectl_ok(&["rollout", "status", "ds/roll", "--timeout=60s"]);
    assert!(st.contains("daemon set \"roll\" successfully rolled out"), "{st}");

    let images = || get(&c, &["get", "pods", "-l", "app=roll", "-o", "jsonpath={.items[*].spec.containers[0].image}"]);
    c.kubectl_ok(&["set", "image", "ds/roll", "c=nginx:2"]);
    let st = c.kubectl_ok(&["rollout", "status", "ds/roll", "--timeout=60s"]);
    assert!(st.contains("successfully rolled out"), "{st}");
    wait_for("all pods on nginx:2", Duration::from_secs(15), || expect_eq(images(), "nginx:2 nginx:2 nginx:2"));
    assert_eq!(get(&c, &["get", "ds", "roll", "-o", "jsonpath={.status.updatedNumberScheduled} {.status.numberAvailable}"]), "3 3");

    let hist = c.kubectl_ok(&["rollout", "history", "ds/roll"]);
    let revs: Vec<&str> = hist.lines().skip(2).filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(revs, ["1", "2"], "{hist}");
    let rev2 = c.kubectl_ok(&["rollout", "history", "ds/roll", "--revision=2"]);
    assert!(rev2.contains("nginx:2"), "{rev2}");

    c.kubectl_ok(&["rollout", "undo", "ds/roll"]);
    assert_eq!(get(&c, &["get", "ds", "roll", "-o", "jsonpath={.spec.template.spec.containers[0].image}"]), "nginx:1");
    let st = c.kubectl_ok(&["rollout", "status", "ds/roll", "--timeout=60s"]);
    assert!(st.contains("successfully rolled out"), "{st}");
    wait_for("all pods back on nginx:1", Duration::from_secs(15), || expect_eq(images(), "nginx:1 nginx:1 nginx:1"));
    // The old template's revision became the newest (3); revision 1 is gone.
    let hist = c.kubectl_ok(&["rollout", "history", "ds/roll"]);
    let revs: Vec<&str> = hist.lines().skip(2).filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(revs, ["2", "3"], "{hist}");
    let deleted = get(&c, &["get", "events", "--field-selector", "involvedObject.kind=DaemonSet,reason=SuccessfulDelete", "-o", "jsonpath={.items[*].message}"]);
    assert!(deleted.contains("Deleted pod: roll-"), "{deleted}");

    // maxSurge 1, maxUnavailable 0: a new pod starts next to the old one before it goes, so at
    // most one node ever has two pods and every node keeps a Ready pod.
    c.kubectl_ok(&["patch", "ds", "roll", "--type=merge", "-p", r#"{"spec":{"updateStrategy":{"rollingUpdate":{"maxSurge":1,"maxUnavailable":0}}}}"#]);
    c.kubectl_ok(&["set", "image", "ds/roll", "c=nginx:3"]);
    let t = Instant::now();
    loop {
        let by_node = pods_by_node(&c, "app=roll");
        // Not terminating: the phase is not followed by a deletion timestamp.
        let live: Vec<&str> = by_node.split_whitespace().filter(|p| p.ends_with("=Running") || p.ends_with("=Pending")).collect();
        assert!(live.len() <= 4, "more than maxSurge extra pods: {by_node}");
        let mut running: Vec<&str> = live.iter().filter(|p| p.ends_with("=Running")).map(|p| p.split('=').next().unwrap_or("")).collect();
        running.dedup();
        assert_eq!(running, ["r-0", "r-1", "r-2"], "a node without a running pod: {by_node}");
        if images() == "nginx:3 nginx:3 nginx:3" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(40), "surge rollout: {by_node} {}", images());
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = c.kubectl_ok(&["rollout", "status", "ds/roll", "--timeout=30s"]);
    assert!(st.contains("successfully rolled out"), "{st}");
}

fn sts_yaml(name: &str, extra_spec: &str, extra_pod: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: {name}\nspec:\n  serviceName: {name}-svc\n  replicas: 3\n  selector:\n    matchLabels:\n      app: {name}\n{extra_spec}  template:\n    metadata:\n      labels:\n        app: {name}\n    spec:\n{extra_pod}      containers:\n      - name: c\n        image: nginx:1\n"
    )
}

/// Live (not terminating) pods of `set` by ordinal: (ordinal, Running and Ready).
fn sts_pods(c: &Cluster, set: &str) -> Vec<(u32, bool)> {
    let t = r#"{range .items[*]}{.metadata.name} {.status.phase} {.status.conditions[?(@.type=="Ready")].status} {.metadata.deletionTimestamp}{"\n"}{end}"#;
    let out = get(c, &["get", "pods", "-l", &format!("app={set}"), "-o", &format!("jsonpath={t}")]);
    let mut v: Vec<(u32, bool)> = out
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let ord = w.first()?.strip_prefix(set)?.strip_prefix('-')?.parse().ok()?;
            (w.len() < 4).then(|| (ord, w.get(1) == Some(&"Running") && w.get(2) == Some(&"True")))
        })
        .collect();
    v.sort();
    v
}

fn images_by_pod(c: &Cluster, set: &str) -> String {
    let t = r#"{range .items[*]}{.metadata.name}={.spec.containers[0].image}{" "}{end}"#;
    let out = get(c, &["get", "pods", "-l", &format!("app={set}"), "-o", &format!("jsonpath={t}")]);
    let mut v: Vec<&str> = out.split_whitespace().collect();
    v.sort();
    v.join(" ")
}

#[test]
fn statefulset_orders_pods_scales_down_from_the_top_and_rolls_by_partition() {
    let c = Cluster::up(3, &[]);
    c.wait_api();
    let _a = Hollow::start(&c, &["--name", "s", "--hollow-count", "2"]);
    wait_nodes(&c, 2);
    c.kubectl_ok(&["apply", "-f", &c.file("web.yaml", &sts_yaml("web", "", ""))]);
    // OrderedReady: whenever pod i exists, every lower ordinal exists and is Running and Ready.
    let t = Instant::now();
    loop {
        let pods = sts_pods(&c, "web");
        for (i, (ord, _)) in pods.iter().enumerate() {
            assert_eq!(*ord, i as u32, "ordinals not a prefix: {pods:?}");
            if i + 1 < pods.len() {
                assert!(pods[i].1, "web-{} exists while web-{i} is not Ready: {pods:?}", i + 1);
            }
        }
        if pods.len() == 3 && pods.iter().all(|p| p.1) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(40), "3 ready pods: {pods:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Creation timestamps agree: each pod created no earlier than its predecessor became Ready.
    let t = r#"{range .items[*]}{.metadata.name} {.metadata.creationTimestamp} {.status.conditions[?(@.type=="Ready")].lastTransitionTime}{"\n"}{end}"#;
    let out = get(&c, &["get", "pods", "-l", "app=web", "-o", &format!("jsonpath={t}")]);
    let mut rows: Vec<Vec<&str>> = out.lines().map(|l| l.split_whitespace().collect()).collect();
    rows.sort();
    for w in rows.windows(2) {
        assert!(w[1][1] >= w[0][2], "{} created at {} before {} was Ready at {}", w[1][0], w[1][1], w[0][0], w[0][2]);
    }
    let st = c.kubectl_ok(&["rollout", "status", "sts/web", "--timeout=30s"]);
    assert!(st.contains("partitioned roll out complete: 3 new pods have been updated"), "{st}");
    let cols: Vec<String> = get(&c, &["get", "sts", "web", "--no-headers"]).split_whitespace().map(str::to_string).collect();
    assert_eq!(cols[..2], ["web", "3/3"], "{cols:?}");

    // Identity: labels, hostname and subdomain; the upstream event wording.
    let pod: serde_json::Value = serde_json::from_str(&get(&c, &["get", "pod", "web-1", "-o", "json"])).expect("pod json");
    assert_eq!(pod["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"], "web-1");
    assert_eq!(pod["metadata"]["labels"]["apps.kubernetes.io/pod-index"], "1");
    let rev = get(&c, &["get", "sts", "web", "-o", "jsonpath={.status.updateRevision}"]);
    assert!(rev.starts_with("web-"), "{rev}");
    assert_eq!(pod["metadata"]["labels"]["controller-revision-hash"], rev.as_str());
    assert_eq!((pod["spec"]["hostname"].as_str(), pod["spec"]["subdomain"].as_str()), (Some("web-1"), Some("web-svc")));
    let events = get(&c, &["get", "events", "--field-selector", "involvedObject.kind=StatefulSet,reason=SuccessfulCreate", "-o", "jsonpath={.items[*].message}"]);
    assert!(events.contains("create Pod web-0 in StatefulSet web successful"), "{events}");

    // A failed pod is deleted and recreated under the same name.
    let uid = get(&c, &["get", "pod", "web-1", "-o", "jsonpath={.metadata.uid}"]);
    c.kubectl_ok(&["patch", "pod", "web-1", "--subresource=status", "--type=merge", "-p", r#"{"status":{"phase":"Failed"}}"#]);
    wait_for("web-1 replaced", Duration::from_secs(30), || {
        let now = get(&c, &["get", "pod", "web-1", "-o", "jsonpath={.metadata.uid} {.status.phase}"]);
        if now.starts_with(&uid) || !now.ends_with("Running") { Err(now) } else { Ok(()) }
    });

    // Scale down: highest ordinal first; the live pods always form a prefix.
    c.kubectl_ok(&["scale", "sts", "web", "--replicas=1"]);
    let t = Instant::now();
    loop {
        let pods = sts_pods(&c, "web");
        for (i, (ord, _)) in pods.iter().enumerate() {
            assert_eq!(*ord, i as u32, "scale-down left a gap: {pods:?}");
        }
        if pods.len() == 1 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "scale down to 1: {pods:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let deleted = get(&c, &["get", "events", "--field-selector", "involvedObject.kind=StatefulSet,reason=SuccessfulDelete", "-o", "jsonpath={.items[*].message}"]);
    assert!(deleted.contains("delete Pod web-2 in StatefulSet web successful") && deleted.contains("delete Pod web-1 in StatefulSet web successful"), "{deleted}");
    c.kubectl_ok(&["scale", "sts", "web", "--replicas=3"]);
    c.kubectl_ok(&["rollout", "status", "sts/web", "--timeout=40s"]);

    // Partition 2: only web-2 is updated.
    c.kubectl_ok(&["patch", "sts", "web", "--type=merge", "-p", r#"{"spec":{"updateStrategy":{"type":"RollingUpdate","rollingUpdate":{"partition":2}}}}"#]);
    c.kubectl_ok(&["set", "image", "sts/web", "c=nginx:2"]);
    let st = c.kubectl_ok(&["rollout", "status", "sts/web", "--timeout=40s"]);
    assert!(st.contains("partitioned roll out complete: 1 new pods have been updated"), "{st}");
    assert_eq!(images_by_pod(&c, "web"), "web-0=nginx:1 web-1=nginx:1 web-2=nginx:2");
    let (cur, upd) = (get(&c, &["get", "sts", "web", "-o", "jsonpath={.status.currentRevision}"]), get(&c, &["get", "sts", "web", "-o", "jsonpath={.status.updateRevision}"]));
    assert_ne!(cur, upd);
    assert_eq!(get(&c, &["get", "sts", "web", "-o", "jsonpath={.status.currentReplicas} {.status.updatedReplicas}"]), "2 1");

    // Partition 0: the rest follow, from the top; then the update revision becomes current.
    c.kubectl_ok(&["patch", "sts", "web", "--type=merge", "-p", r#"{"spec":{"updateStrategy":{"rollingUpdate":{"partition":0}}}}"#]);
    c.kubectl_ok(&["rollout", "status", "sts/web", "--timeout=40s"]);
    wait_for("all on nginx:2", Duration::from_secs(20), || expect_eq(images_by_pod(&c, "web"), "web-0=nginx:2 web-1=nginx:2 web-2=nginx:2"));
    wait_for("revision current", Duration::from_secs(20), || expect_eq(get(&c, &["get", "sts", "web", "-o", "jsonpath={.status.currentRevision} {.status.currentReplicas}"]), &format!("{upd} 3")));
    let hist = c.kubectl_ok(&["rollout", "history", "sts/web"]);
    let revs: Vec<&str> = hist.lines().skip(2).filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(revs, ["1", "2"], "{hist}");
    c.kubectl_ok(&["rollout", "undo", "sts/web"]);
    c.kubectl_ok(&["rollout", "status", "sts/web", "--timeout=40s"]);
    wait_for("all back on nginx:1", Duration::from_secs(30), || expect_eq(images_by_pod(&c, "web"), "web-0=nginx:1 web-1=nginx:1 web-2=nginx:1"));
}

#[test]
fn statefulset_claims_are_created_per_pod_and_retained() {
    let c = Cluster::up(3, &[]);
    c.wait_api();
    let _a = Hollow::start(&c, &["--name", "v", "--hollow-count", "2"]);
    wait_nodes(&c, 2);
    // Parallel, so every claim is created even if pods wait for their claims to be bound.
    let claims = "  podManagementPolicy: Parallel\n  volumeClaimTemplates:\n  - metadata:\n      name: www\n      labels:\n        tier: data\n    spec:\n      accessModes: [ReadWriteOnce]\n      resources:\n        requests:\n          storage: 1Gi\n";
    c.kubectl_ok(&["apply", "-f", &c.file("data.yaml", &sts_yaml("data", claims, ""))]);
    let pvcs = |sel: &str| get(&c, &["get", "pvc", "-l", sel, "-o", "jsonpath={.items[*].metadata.name}"]);
    wait_for("three claims", Duration::from_secs(30), || expect_eq(pvcs("app=data,tier=data"), "www-data-0 www-data-1 www-data-2"));
    wait_for("three pods", Duration::from_secs(30), || expect_eq(get(&c, &["get", "pods", "-l", "app=data", "-o", "jsonpath={.items[*].metadata.name}"]), "data-0 data-1 data-2"));
    let vol = get(&c, &["get", "pod", "data-2", "-o", "jsonpath={.spec.volumes[?(@.name==\"www\")].persistentVolumeClaim.claimName}"]);
    assert_eq!(vol, "www-data-2");
    let events = get(&c, &["get", "events", "--field-selector", "involvedObject.kind=StatefulSet,reason=SuccessfulCreate", "-o", "jsonpath={.items[*].message}"]);
    assert!(events.contains("create Claim www-data-0 Pod data-0 in StatefulSet data success"), "{events}");

    // Retained by default: after scale-down and after the set is deleted.
    c.kubectl_ok(&["scale", "sts", "data", "--replicas=1"]);
    wait_for("one pod", Duration::from_secs(30), || expect_eq(get(&c, &["get", "pods", "-l", "app=data", "-o", "jsonpath={.items[*].metadata.name}"]), "data-0"));
    assert_eq!(pvcs("app=data"), "www-data-0 www-data-1 www-data-2");
    c.kubectl_ok(&["delete", "sts", "data"]);
    wait_for("pods gone", Duration::from_secs(30), || expect_eq(get(&c, &["get", "pods", "-l", "app=data", "-o", "name"]), ""));
    assert_eq!(pvcs("app=data"), "www-data-0 www-data-1 www-data-2");

    // whenDeleted: Delete hands the claims to the set, so they go with it; whenScaled: Delete
    // hands a scaled-away pod's claims to the pod, so they go with the pod.
    let policy = format!("{claims}  persistentVolumeClaimRetentionPolicy:\n    whenDeleted: Delete\n    whenScaled: Delete\n");
    c.kubectl_ok(&["apply", "-f", &c.file("tmp.yaml", &sts_yaml("tmp", &policy, ""))]);
    wait_for("tmp claims", Duration::from_secs(30), || expect_eq(pvcs("app=tmp"), "www-tmp-0 www-tmp-1 www-tmp-2"));
    let owner = get(&c, &["get", "pvc", "www-tmp-0", "-o", "jsonpath={.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}"]);
    assert_eq!(owner, "StatefulSet/tmp");
    wait_for("three tmp pods", Duration::from_secs(30), || expect_eq(get(&c, &["get", "pods", "-l", "app=tmp", "-o", "jsonpath={.items[*].metadata.name}"]), "tmp-0 tmp-1 tmp-2"));
    c.kubectl_ok(&["scale", "sts", "tmp", "--replicas=1"]);
    wait_for("scaled-away claims deleted", Duration::from_secs(30), || expect_eq(pvcs("app=tmp"), "www-tmp-0"));
    c.kubectl_ok(&["delete", "sts", "tmp"]);
    wait_for("tmp claims deleted with the set", Duration::from_secs(30), || expect_eq(pvcs("app=tmp"), ""));
    assert_eq!(pvcs("app=data"), "www-data-0 www-data-1 www-data-2");

    // .spec.ordinals.start numbers pods and claims from there.
    let start = format!("  replicas: 2\n  ordinals:\n    start: 3\n{claims}");
    c.kubectl_ok(&["apply", "-f", &c.file("ord.yaml", &sts_yaml("ord", &start, "").replace("  replicas: 3\n", ""))]);
    wait_for("pods from ordinal 3", Duration::from_secs(30), || expect_eq(get(&c, &["get", "pods", "-l", "app=ord", "-o", "jsonpath={.items[*].metadata.name}"]), "ord-3 ord-4"));
    assert_eq!(pvcs("app=ord"), "www-ord-3 www-ord-4");
}
