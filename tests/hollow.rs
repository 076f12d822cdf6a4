//! Hollow nodes (`kuberaft node --hollow`) in-process against three replicas: registration,
//! Lease heartbeats, pods reported Running, graceful deletion confirmed by the node, Job pods
//! completing, and 200 nodes from one process.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, Cluster};

/// A runtime running hollow nodes in the background (dropped with the test).
struct Hollow {
    rt: tokio::runtime::Runtime,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Hollow {
    fn start(c: &Cluster, flags: &[&str]) -> Hollow {
        // The nodes' logs appear with a failing test's output.
        let _ = tracing_subscriber::fmt().with_env_filter("node=debug").with_test_writer().try_init();
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
        Hollow { rt, task }
    }

    fn assert_running(&mut self) {
        if self.task.is_finished() {
            let r = self.rt.block_on(&mut self.task);
            panic!("hollow nodes stopped: {r:?}");
        }
    }
}

fn ready_nodes(c: &Cluster, prefix: &str) -> Result<Vec<Vec<String>>, String> {
    let out = c.kubectl(&["get", "nodes", "-o", "wide", "--no-headers"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rows: Vec<Vec<String>> = text.lines().map(|l| l.split_whitespace().map(str::to_string).collect()).filter(|r: &Vec<String>| r.first().is_some_and(|n| n.starts_with(prefix))).collect();
    if rows.iter().all(|r| r.get(1).map(String::as_str) == Some("Ready")) {
        Ok(rows)
    } else {
        Err(text)
    }
}

#[test]
fn hollow_nodes_register_heartbeat_and_run_pods() {
    let c = Cluster::up(3, &[]);
    c.wait_api();
    let mut h = Hollow::start(&c, &["--name", "hollow", "--hollow-count", "3", "--heartbeat-seconds", "2", "--labels", "zone=z1", "--taints", "dedicated=test:PreferNoSchedule"]);

    // Three Ready nodes, with the columns kubectl prints.
    let rows = eventually("3 Ready nodes", Duration::from_secs(30), || {
        let rows = ready_nodes(&c, "hollow-")?;
        if rows.len() == 3 { Ok(rows) } else { Err(format!("{rows:?}")) }
    });
    h.assert_running();
    let header = c.kubectl_ok(&["get", "nodes", "-o", "wide"]);
    assert!(header.lines().next().unwrap_or("").split_whitespace().eq(["NAME", "STATUS", "ROLES", "AGE", "VERSION", "INTERNAL-IP", "EXTERNAL-IP", "OS-IMAGE", "KERNEL-VERSION", "CONTAINER-RUNTIME"]), "{header}");
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r[0], format!("hollow-{i}"));
        assert_eq!((r[1].as_str(), r[2].as_str(), r[4].as_str(), r[5].as_str(), r[6].as_str(), r[7].as_str(), r[9].as_str()), ("Ready", "<none>", "v1.33.0-kuberaft", "127.0.0.1", "<none>", "hollow", "hollow://1.0"), "{r:?}");
    }
    let node1: serde_json::Value = serde_json::from_str(&c.kubectl_ok(&["get", "node", "hollow-1", "-o", "json"])).expect("node json");
    assert_eq!(node1["metadata"]["labels"]["zone"], "z1");
    assert_eq!(node1["metadata"]["labels"]["kubernetes.io/hostname"], "hollow-1");
    assert_eq!(node1["spec"]["taints"][0]["key"], "dedicated");
    assert_eq!(node1["status"]["capacity"]["pods"], "110");
    assert_eq!(node1["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"], 10250);

    // Leases are renewed.
    let lease = |name: &str| -> serde_json::Value { serde_json::from_str(&c.kubectl_ok(&["get", "lease", "-n", "kube-node-lease", name, "-o", "json"])).expect("lease json") };
    let first = lease("hollow-2");
    assert_eq!(first["spec"]["holderIdentity"], "hollow-2");
    assert_eq!(first["spec"]["leaseDurationSeconds"], 40);
    assert_eq!(first["metadata"]["ownerReferences"][0]["kind"], "Node");
    let t0 = first["spec"]["renewTime"].as_str().expect("renewTime").to_string();
    eventually("lease renewal", Duration::from_secs(10), || {
        let t = lease("hollow-2")["spec"]["renewTime"].as_str().unwrap_or_default().to_string();
        // RFC 3339 with the same precision and zone: string order is time order.
        if t > t0 { Ok(()) } else { Err(t) }
    });

    // A pod bound to hollow-1 runs, with an IP from hollow-1's range.
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec:\n  nodeName: hollow-1\n  containers:\n  - {name: c, image: nginx}\n  - {name: d, image: busybox}\n";
    c.kubectl_ok(&["apply", "-f", &c.file("x.yaml", pod)]);
    c.kubectl_ok(&["wait", "--for=condition=Ready", "pod/x", "--timeout=30s"]);
    let x: serde_json::Value = serde_json::from_str(&c.kubectl_ok(&["get", "pod", "x", "-o", "json"])).expect("pod json");
    assert_eq!(x["status"]["phase"], "Running");
    assert!(x["status"]["podIP"].as_str().unwrap_or_default().starts_with("10.244.1."), "{}", x["status"]);
    assert_eq!(x["status"]["hostIP"], "127.0.0.1");
    assert!(x["status"]["startTime"].is_string());
    let uid = x["metadata"]["uid"].as_str().expect("uid");
    for (k, name) in ["c", "d"].iter().enumerate() {
        let cs = &x["status"]["containerStatuses"][k];
        assert_eq!(cs["name"], *name);
        assert_eq!((cs["ready"].as_bool(), cs["started"].as_bool(), cs["restartCount"].as_i64()), (Some(true), Some(true), Some(0)));
        assert!(cs["state"]["running"]["startedAt"].is_string());
        assert_eq!(cs["containerID"], format!("hollow://{uid}-{name}"));
    }
    let wide = c.kubectl_ok(&["get", "pod", "x", "--no-headers"]);
    assert!(wide.split_whitespace().take(3).eq(["x", "2/2", "Running"]), "{wide}");

    // Graceful deletion (30 s grace) completes as soon as the node confirms.
    let t = Instant::now();
    c.kubectl_ok(&["delete", "pod", "x", "--timeout=20s"]);
    assert!(t.elapsed() < Duration::from_secs(10), "delete took {:?}", t.elapsed());
    assert!(!c.kubectl(&["get", "pod", "x"]).status.success());
    // The node says so, as kubelet does.
    let killing = c.kubectl_ok(&["get", "events", "--field-selector", "involvedObject.name=x,reason=Killing", "-o", "jsonpath={range .items[*]}{.message}|{.source.component}|{.source.host}{\"\\n\"}{end}"]);
    let mut lines: Vec<&str> = killing.lines().collect();
    lines.sort();
    assert_eq!(lines, ["Stopping container c|kubelet|hollow-1", "Stopping container d|kubelet|hollow-1"], "{killing}");

    // A Job's pod completes. The Job exists (created suspended, so no Job controller runs
    // pods for it) so that the pod is not an orphan.
    let job = "apiVersion: batch/v1\nkind: Job\nmetadata: {name: j}\nspec:\n  suspend: true\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{name: c, image: busybox}]\n";
    c.kubectl_ok(&["apply", "-f", &c.file("j.yaml", job)]);
    let job_uid = c.kubectl_ok(&["get", "job", "j", "-o", "jsonpath={.metadata.uid}"]);
    let jp = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: jp\n  ownerReferences: [{{apiVersion: batch/v1, kind: Job, name: j, uid: \"{job_uid}\"}}]\nspec:\n  nodeName: hollow-0\n  restartPolicy: Never\n  containers: [{{name: c, image: busybox}}]\n"
    );
    c.kubectl_ok(&["apply", "-f", &c.file("jp.yaml", &jp)]);
    c.kubectl_ok(&["wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/jp", "--timeout=30s"]);
    let jp: serde_json::Value = serde_json::from_str(&c.kubectl_ok(&["get", "pod", "jp", "-o", "json"])).expect("pod json");
    let term = &jp["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!((term["exitCode"].as_i64(), term["reason"].as_str()), (Some(0), Some("Completed")), "{}", jp["status"]);
    let line = c.kubectl_ok(&["get", "pod", "jp", "--no-headers"]);
    assert!(line.split_whitespace().take(3).eq(["jp", "0/1", "Completed"]), "{line}");
    // A finished pod goes at once on delete (nothing to stop).
    c.kubectl_ok(&["delete", "pod", "jp", "--timeout=10s"]);

    // Someone else marks a node NotReady (as the node lifecycle controller does after missed
    // heartbeats): the node reports Ready again at its next heartbeat.
    // The patch's own response shows it took effect; a later read could already see the node's
    // next heartbeat.
    let patched = c.kubectl_ok(&["patch", "node", "hollow-0", "--subresource=status", "--type=merge", "-p", r#"{"status":{"conditions":[{"type":"Ready","status":"Unknown","reason":"NodeStatusUnknown"}]}}"#, "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}"]);
    assert_eq!(patched.trim(), "Unknown");
    eventually("hollow-0 Ready again", Duration::from_secs(10), || {
        let rows = ready_nodes(&c, "hollow-0")?;
        if rows.len() == 1 { Ok(()) } else { Err(format!("{rows:?}")) }
    });

    // A deleted Node is registered again.
    c.kubectl_ok(&["delete", "node", "hollow-2"]);
    eventually("hollow-2 back", Duration::from_secs(20), || {
        let rows = ready_nodes(&c, "hollow-2")?;
        if rows.len() == 1 { Ok(()) } else { Err(format!("{rows:?}")) }
    });
    h.assert_running();
}

#[test]
fn two_hundred_hollow_nodes_from_one_process() {
    let c = Cluster::up(3, &[]);
    c.wait_api();
    let mut h = Hollow::start(&c, &["--name", "scale", "--hollow-count", "200"]);
    let t = Instant::now();
    eventually("200 Ready nodes", Duration::from_secs(180), || {
        let rows = ready_nodes(&c, "scale-")?;
        if rows.len() == 200 { Ok(()) } else { Err(format!("{} nodes", rows.len())) }
    });
    eprintln!("200 hollow nodes Ready after {:?}", t.elapsed());
    h.assert_running();
    eventually("200 Leases", Duration::from_secs(30), || {
        let leases = c.kubectl_ok(&["get", "leases", "-n", "kube-node-lease", "--no-headers"]);
        let n = leases.lines().filter(|l| l.starts_with("scale-")).count();
        if n == 200 { Ok(()) } else { Err(format!("{n} leases")) }
    });
}

/// Manual scale check (HOLLOW_NODES, default 2000): every node stays Ready and keeps its Lease
/// fresh over several heartbeats. `cargo nextest run --test hollow --run-ignored only`
#[test]
#[ignore]
fn many_hollow_nodes_keep_their_leases() {
    let n: usize = std::env::var("HOLLOW_NODES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let c = Cluster::up(3, &[]);
    c.wait_api();
    let count = n.to_string();
    let mut h = Hollow::start(&c, &["--name", "many", "--hollow-count", &count]);
    let t = Instant::now();
    eventually("all nodes Ready", Duration::from_secs(600), || {
        let rows = ready_nodes(&c, "many-")?;
        if rows.len() == n { Ok(()) } else { Err(format!("{} nodes", rows.len())) }
    });
    eprintln!("{n} hollow nodes Ready after {:?}", t.elapsed());
    std::thread::sleep(Duration::from_secs(35));
    h.assert_running();
    // Every Lease renewed within the last two heartbeats (10 s each) plus slack.
    let out = c.kubectl_ok(&["get", "leases", "-n", "kube-node-lease", "-o", "jsonpath={range .items[*]}{.metadata.name} {.spec.renewTime}{\"\\n\"}{end}"]);
    let now = k8s_openapi::jiff::Timestamp::now();
    let stale: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("many-"))
        .filter(|l| {
            let renewed = l.split_whitespace().nth(1).and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok());
            renewed.is_none_or(|r| now.as_second() - r.as_second() > 25)
        })
        .collect();
    assert_eq!(out.lines().filter(|l| l.starts_with("many-")).count(), n);
    assert!(stale.is_empty(), "{} stale leases, e.g. {:?}", stale.len(), stale.first());
    eventually("all nodes still Ready", Duration::from_secs(5), || {
        let rows = ready_nodes(&c, "many-")?;
        if rows.len() == n { Ok(()) } else { Err(format!("{} nodes", rows.len())) }
    });
    // 500 pods spread over the nodes all run, each with its own IP.
    let pods: Vec<String> = (0..500).map(|k| format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{k}}}\nspec: {{nodeName: many-{}, containers: [{{name: c, image: x}}]}}\n", k % n)).collect();
    c.kubectl_ok(&["apply", "-f", &c.file("pods.yaml", &pods.concat())]);
    let t = Instant::now();
    let ips = eventually("500 pods Running", Duration::from_secs(120), || {
        let out = c.kubectl_ok(&["get", "pods", "--field-selector=status.phase=Running", "-o", "jsonpath={.items[*].status.podIP}"]);
        let ips: Vec<String> = out.split_whitespace().map(str::to_string).collect();
        if ips.len() == 500 { Ok(ips) } else { Err(format!("{} running", ips.len())) }
    });
    eprintln!("500 pods Running after {:?}", t.elapsed());
    assert_eq!(ips.iter().collect::<std::collections::HashSet<_>>().len(), 500, "pod IPs are unique");
}
