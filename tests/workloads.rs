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
}
