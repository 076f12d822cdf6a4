//! The scheduler and controller manager inside the replicas: one leader each; when the replica
//! holding a Lease dies, another replica's component takes over and the cluster keeps working.

mod common;

use std::time::{Duration, Instant};

use common::Cluster;

fn holder(c: &Cluster, replica: &str, lease: &str) -> String {
    let out = c.kubectl_at(replica, &["get", "lease", lease, "-n", "kube-system", "-o", "jsonpath={.spec.holderIdentity}"]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
    t.elapsed()
}

#[test]
fn components_fail_over_when_the_leading_replica_dies() {
    // Default election timings (2.5/2/0.5 s).
    let c = Cluster::up(3, &[]);
    c.wait_api();
    wait_until("a scheduler leader", Duration::from_secs(30), || !holder(&c, "n1", "kuberaft-scheduler").is_empty());
    wait_until("a controller-manager leader", Duration::from_secs(30), || !holder(&c, "n1", "kuberaft-controller-manager").is_empty());
    let victim = holder(&c, "n1", "kuberaft-scheduler");
    let survivor = ["n1", "n2", "n3"].into_iter().find(|n| *n != victim).expect("survivor").to_string();
    // Hollow nodes in this process, talking to a replica that survives.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let kc = c.path().join(&survivor).join("kubeconfig");
    rt.spawn(async move {
        let kc = kube::config::Kubeconfig::read_from(kc).expect("kubeconfig");
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.expect("config");
        let args = node::NodeArgs::from_flags(["--hollow", "--kubeconfig", "unused", "--name", "fo", "--hollow-count", "2"]).expect("flags");
        let _ = node::run_hollow(cfg, args).await;
    });
    let k = |args: &[&str]| {
        let out = c.kubectl_at(&survivor, args);
        assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    wait_until("two Ready hollow nodes", Duration::from_secs(30), || c.kubectl_at(&survivor, &["get", "nodes", "-o", "name"]).stdout.len() > 10);
    k(&["create", "deployment", "web", "--image=nginx:1.27", "--replicas=3"]);
    k(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    c.script_ok(&["kill", &victim]);
    let took = wait_until("another replica to take the scheduler Lease", Duration::from_secs(30), || {
        let h = holder(&c, &survivor, "kuberaft-scheduler");
        !h.is_empty() && h != victim
    });
    eprintln!("scheduler leadership moved from {victim} in {took:?}");
    // About 3 s by design; the bound is loose for loaded CI machines but would catch client-go's
    // 15 s defaults coming back.
    assert!(took < Duration::from_secs(8), "takeover took {took:?}");
    wait_until("the controller manager to lead from a live replica", Duration::from_secs(30), || {
        let h = holder(&c, &survivor, "kuberaft-controller-manager");
        !h.is_empty() && h != victim
    });
    // The new leaders act: scale up, everything scheduled and running, no ReplicaSet overshoot.
    k(&["scale", "deploy/web", "--replicas=6"]);
    k(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    let pods = k(&["get", "pods", "-l", "app=web", "-o", "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName}{\"\\n\"}{end}"]);
    let rows: Vec<&str> = pods.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(rows.len(), 6, "{pods}");
    assert!(rows.iter().all(|r| r.split_whitespace().nth(1).map(|n| n.starts_with("fo-")).unwrap_or(false)), "every pod bound: {pods}");
    let scheduled = k(&["get", "events", "--field-selector", "reason=Scheduled", "-o", "jsonpath={range .items[*]}{.involvedObject.name}{\"\\n\"}{end}"]);
    for r in &rows {
        let name = r.split_whitespace().next().unwrap_or("");
        assert_eq!(scheduled.lines().filter(|l| *l == name).count(), 1, "{name} bound exactly once: {scheduled}");
    }
    let rs = k(&["get", "rs", "-l", "app=web", "-o", "jsonpath={.items[*].status.replicas}"]);
    let total: i64 = rs.split_whitespace().filter_map(|x| x.parse::<i64>().ok()).sum();
    assert_eq!(total, 6, "ReplicaSets hold exactly the desired pods: {rs}");
    drop(rt);
}
