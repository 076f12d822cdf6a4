//! PodDisruptionBudgets end to end: the disruption controller keeps the budget's status, and
//! `kubectl drain` (the eviction API) is held back by it, one pod at a time, while the
//! ReplicaSet replaces the evicted pods on the other node.

mod common;

use std::time::Duration;

use common::{eventually, Hollow, Cluster};
use serde_json::Value;

fn pdb_status(c: &Cluster) -> Value {
    serde_json::from_str::<Value>(&c.kubectl_ok(&["get", "pdb", "web", "-o", "json"])).expect("json")["status"].clone()
}

#[test]
fn budgets_track_healthy_pods_and_hold_back_drain() {
    let c = Cluster::up(3, &[]);
    c.wait_api();
    let _h = Hollow::start(&c, &["--name", "pdb", "--hollow-count", "2", "--heartbeat-seconds", "2"]);
    eventually("2 nodes", Duration::from_secs(30), || {
        let n = c.kubectl_ok(&["get", "nodes", "--no-headers"]);
        if n.lines().filter(|l| l.contains(" Ready ")).count() == 2 { Ok(()) } else { Err(n) }
    });
    c.kubectl_ok(&["create", "deployment", "web", "--image=nginx", "--replicas=4"]);
    c.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    c.kubectl_ok(&["create", "pdb", "web", "--selector=app=web", "--min-available=3"]);
    let st = eventually("budget status", Duration::from_secs(20), || {
        let s = pdb_status(&c);
        if s["currentHealthy"] == 4 { Ok(s) } else { Err(s.to_string()) }
    });
    assert_eq!((st["expectedPods"].as_i64(), st["desiredHealthy"].as_i64(), st["disruptionsAllowed"].as_i64()), (Some(4), Some(3), Some(1)), "{st}");
    assert_eq!(st["conditions"][0]["type"], "DisruptionAllowed");
    assert_eq!(st["conditions"][0]["reason"], "SufficientPods");
    let row = c.kubectl_ok(&["get", "pdb", "web", "--no-headers"]);
    assert!(row.split_whitespace().take(4).eq(["web", "3", "N/A", "1"]), "{row}");

    // Percentages count the Deployment's scale.
    c.kubectl_ok(&["create", "pdb", "half", "--selector=app=web", "--max-unavailable=50%"]);
    eventually("percentage budget", Duration::from_secs(20), || {
        let s = serde_json::from_str::<Value>(&c.kubectl_ok(&["get", "pdb", "half", "-o", "json"])).expect("json")["status"].clone();
        if s["expectedPods"] == 4 && s["desiredHealthy"] == 2 && s["disruptionsAllowed"] == 2 { Ok(()) } else { Err(s.to_string()) }
    });
    c.kubectl_ok(&["delete", "pdb", "half"]);

    // Drain the node holding the most pods: evictions beyond the budget get 429 and are retried
    // until replacements are Ready elsewhere.
    let on = |node: &str| c.kubectl_ok(&["get", "pods", "-l", "app=web", "--field-selector", &format!("spec.nodeName={node}"), "-o", "name"]).lines().count();
    let busiest = if on("pdb-0") >= on("pdb-1") { "pdb-0" } else { "pdb-1" };
    let other = if busiest == "pdb-0" { "pdb-1" } else { "pdb-0" };
    let n = on(busiest);
    assert!(n >= 2, "the busiest node has {n} pods");
    let out = c.kubectl(&["drain", busiest, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=90s"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "drain failed: {stderr}");
    assert!(stderr.contains("Cannot evict pod as it would violate the pod's disruption budget"), "the budget never held the drain back: {stderr}");
    assert_eq!(on(busiest), 0);
    eventually("all pods on the other node", Duration::from_secs(30), || {
        let k = on(other);
        if k == 4 { Ok(()) } else { Err(format!("{k} pods on {other}")) }
    });
}
