//! PersistentVolumes end to end: the default StorageClass, the local-path provisioner (delayed
//! binding: the volume is made on the node of the first pod using the claim), static binding
//! of the smallest fitting volume, and reclaim (Delete for provisioned volumes, Retain keeps a
//! static one Released). Three replicas run the controllers; hollow nodes run the pods.

mod common;

use std::time::Duration;

use common::{eventually, Cluster, Hollow};
use serde_json::Value;

fn get_json(c: &Cluster, args: &[&str]) -> Result<Value, String> {
    let out = c.kubectl(&[args, &["-o", "json"]].concat());
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

fn phase_is(c: &Cluster, args: &[&str], want: &str) -> Result<Value, String> {
    let v = get_json(c, args)?;
    if v["status"]["phase"] == want {
        Ok(v)
    } else {
        Err(v["status"].to_string())
    }
}

#[test]
fn claims_are_provisioned_on_the_pods_node_bound_and_reclaimed() {
    let c = Cluster::up(3, &[]);
    c.wait_api();
    let _h = Hollow::start(&c, &["--name", "vol", "--hollow-count", "2", "--heartbeat-seconds", "2"]);
    eventually("2 nodes", Duration::from_secs(30), || {
        let n = c.kubectl_ok(&["get", "nodes", "--no-headers"]);
        if n.lines().filter(|l| l.contains(" Ready ")).count() == 2 { Ok(()) } else { Err(n) }
    });

    // The default class, as `kubectl get sc` shows it.
    let sc = c.kubectl_ok(&["get", "storageclass"]);
    assert!(sc.lines().any(|l| l.starts_with("local-path (default)") && l.contains("kuberaft.io/local-path") && l.contains("Delete") && l.contains("WaitForFirstConsumer")), "{sc}");

    // A claim without a class gets the default one and waits for its first consumer.
    let claim = "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n";
    c.kubectl_ok(&["apply", "-f", &c.file("data.yaml", claim)]);
    let pvc = get_json(&c, &["get", "pvc", "data"]).expect("pvc");
    assert_eq!(pvc["spec"]["storageClassName"], "local-path");
    eventually("WaitForFirstConsumer event", Duration::from_secs(20), || {
        let ev = c.kubectl_ok(&["get", "events", "--field-selector", "involvedObject.name=data", "-o", "jsonpath={.items[*].reason}"]);
        if ev.contains("WaitForFirstConsumer") { Ok(()) } else { Err(ev) }
    });
    // Each look at the claim repeats the event: one Event object counts them.
    c.kubectl_ok(&["annotate", "pvc", "data", "touch=1"]);
    c.kubectl_ok(&["annotate", "pvc", "data", "touch=2", "--overwrite"]);
    eventually("aggregated event", Duration::from_secs(20), || {
        let ev = c.kubectl_ok(&["get", "events", "--field-selector", "involvedObject.name=data,reason=WaitForFirstConsumer", "-o", "jsonpath={.items[*].count}"]);
        let counts: Vec<&str> = ev.split_whitespace().collect();
        if counts.len() == 1 && counts[0].parse::<i32>().unwrap_or(0) >= 2 { Ok(()) } else { Err(ev) }
    });
    assert_eq!(get_json(&c, &["get", "pvc", "data"]).expect("pvc")["status"]["phase"], "Pending", "no volume before a pod uses the claim");

    // A pod using it: the volume is made on the pod's node and bound.
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: user}\nspec:\n  containers: [{name: c, image: busybox, volumeMounts: [{name: d, mountPath: /data}]}]\n  volumes: [{name: d, persistentVolumeClaim: {claimName: data}}]\n";
    c.kubectl_ok(&["apply", "-f", &c.file("user.yaml", pod)]);
    let pvc = eventually("claim bound", Duration::from_secs(40), || phase_is(&c, &["get", "pvc", "data"], "Bound"));
    let uid = pvc["metadata"]["uid"].as_str().expect("uid").to_string();
    let pv_name = format!("pvc-{uid}");
    assert_eq!(pvc["spec"]["volumeName"], pv_name);
    assert_eq!(pvc["status"]["capacity"]["storage"], "1Gi");
    let pv = eventually("volume bound", Duration::from_secs(20), || phase_is(&c, &["get", "pv", &pv_name], "Bound"));
    c.kubectl_ok(&["wait", "--for=condition=Ready", "pod/user", "--timeout=30s"]);
    let node = c.kubectl_ok(&["get", "pod", "user", "-o", "jsonpath={.spec.nodeName}"]);
    assert_eq!(pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"][0], node.as_str(), "the volume lives on the pod's node");
    assert_eq!(pv["spec"]["claimRef"]["uid"], uid.as_str());
    assert!(pv["spec"]["hostPath"]["path"].as_str().unwrap_or("").starts_with("/var/lib/kuberaft/volumes/pvc-"), "{}", pv["spec"]);
    let row = c.kubectl_ok(&["get", "pvc", "data", "--no-headers"]);
    assert!(row.split_whitespace().take(6).eq(["data", "Bound", pv_name.as_str(), "1Gi", "RWO", "local-path"]), "{row}");

    // Static volumes: the smallest that fits is chosen; none left means Pending.
    let pv_yaml = |name: &str, size: &str| format!("apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: {name}}}\nspec:\n  storageClassName: manual\n  capacity: {{storage: {size}}}\n  accessModes: [ReadWriteOnce]\n  hostPath: {{path: /tmp/{name}}}\n");
    c.kubectl_ok(&["apply", "-f", &c.file("big.yaml", &pv_yaml("big", "10Gi"))]);
    c.kubectl_ok(&["apply", "-f", &c.file("small.yaml", &pv_yaml("small", "2Gi"))]);
    eventually("static volumes Available", Duration::from_secs(20), || {
        let a = get_json(&c, &["get", "pv", "small"])?;
        let b = get_json(&c, &["get", "pv", "big"])?;
        if a["status"]["phase"] == "Available" && b["status"]["phase"] == "Available" { Ok(()) } else { Err(format!("{} {}", a["status"], b["status"])) }
    });
    let manual = |name: &str| format!("apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: {name}}}\nspec:\n  storageClassName: manual\n  accessModes: [ReadWriteOnce]\n  resources: {{requests: {{storage: 1Gi}}}}\n");
    c.kubectl_ok(&["apply", "-f", &c.file("m1.yaml", &manual("m1"))]);
    let m1 = eventually("m1 bound", Duration::from_secs(20), || phase_is(&c, &["get", "pvc", "m1"], "Bound"));
    assert_eq!(m1["spec"]["volumeName"], "small");
    c.kubectl_ok(&["apply", "-f", &c.file("m2.yaml", &manual("m2"))]);
    let m2 = eventually("m2 bound", Duration::from_secs(20), || phase_is(&c, &["get", "pvc", "m2"], "Bound"));
    assert_eq!(m2["spec"]["volumeName"], "big");
    c.kubectl_ok(&["apply", "-f", &c.file("m3.yaml", &manual("m3"))]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(get_json(&c, &["get", "pvc", "m3"]).expect("m3")["status"]["phase"], "Pending");

    // Reclaim: the static volume (Retain) is Released, the provisioned one (Delete) goes away.
    c.kubectl_ok(&["delete", "pvc", "m1"]);
    eventually("small Released", Duration::from_secs(20), || phase_is(&c, &["get", "pv", "small"], "Released"));
    c.kubectl_ok(&["delete", "pod", "user"]);
    c.kubectl_ok(&["delete", "pvc", "data"]);
    eventually("provisioned volume deleted", Duration::from_secs(20), || {
        let out = c.kubectl(&["get", "pv", &pv_name]);
        if out.status.success() { Err(String::from_utf8_lossy(&out.stdout).into_owned()) } else { Ok(()) }
    });

    // A StatefulSet's claims from volumeClaimTemplates are provisioned where its pods run.
    let sts = "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: db}\nspec:\n  replicas: 2\n  serviceName: db\n  selector: {matchLabels: {app: db}}\n  template:\n    metadata: {labels: {app: db}}\n    spec:\n      containers: [{name: c, image: busybox, volumeMounts: [{name: data, mountPath: /data}]}]\n  volumeClaimTemplates:\n  - metadata: {name: data}\n    spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 64Mi}}}\n";
    c.kubectl_ok(&["apply", "-f", &c.file("db.yaml", sts)]);
    c.kubectl_ok(&["rollout", "status", "sts/db", "--timeout=60s"]);
    for i in 0..2 {
        let claim = eventually("db claim bound", Duration::from_secs(20), || phase_is(&c, &["get", "pvc", &format!("data-db-{i}")], "Bound"));
        let pv = get_json(&c, &["get", "pv", claim["spec"]["volumeName"].as_str().unwrap_or("")]).expect("pv");
        let node = c.kubectl_ok(&["get", "pod", &format!("db-{i}"), "-o", "jsonpath={.spec.nodeName}"]);
        assert_eq!(pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"][0], node.as_str());
    }
}
