//! The real kubectl (v1.33 via the dispatcher at /usr/bin/kubectl) against three replicas.

mod common;

use std::time::{Duration, Instant};

use common::Cluster;

fn up() -> Cluster {
    let c = Cluster::up(3, &[]);
    c.wait_api();
    c
}

const DEPLOY: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: nginx
        image: nginx:1.27
        ports:
        - containerPort: 80
"#;

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn version_reports_minor_33_and_discovery_lists_the_builtin_resources() {
    let c = up();
    let v = json(&c.kubectl_ok(&["version", "-o", "json"]));
    assert_eq!(v["serverVersion"]["minor"], "33");
    assert_eq!(v["serverVersion"]["major"], "1");
    let res = c.kubectl_ok(&["api-resources", "-o", "name"]);
    for r in ["pods", "deployments.apps", "leases.coordination.k8s.io", "customresourcedefinitions.apiextensions.k8s.io", "clusterroles.rbac.authorization.k8s.io", "endpointslices.discovery.k8s.io"] {
        assert!(res.lines().any(|l| l == r), "{r} missing from api-resources:\n{res}");
    }
    let short = c.kubectl_ok(&["api-resources", "--api-group=apps"]);
    assert!(short.contains("deploy") && short.contains("Deployment"), "{short}");
    let raw = json(&c.kubectl_ok(&["get", "--raw", "/api/v1"]));
    let ev = raw["resources"].as_array().and_then(|a| a.iter().find(|r| r["name"] == "pods/eviction")).cloned().unwrap_or_default();
    assert_eq!(ev["group"], "policy");
    // Every replica serves the same API.
    for n in ["n2", "n3"] {
        let out = c.kubectl_at(n, &["get", "namespaces", "-o", "name"]);
        assert!(String::from_utf8_lossy(&out.stdout).contains("namespace/kube-system"), "{n}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn apply_twice_updates_the_image_bumps_generation_and_get_prints_kubectl_columns() {
    let c = up();
    let f = c.file("dep.yaml", DEPLOY);
    assert!(c.kubectl_ok(&["apply", "-f", &f]).contains("deployment.apps/web created"));
    let d = json(&c.kubectl_ok(&["get", "deploy", "web", "-o", "json"]));
    assert_eq!(d["metadata"]["generation"], 1);
    assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%", "defaults applied");
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"], "IfNotPresent");
    assert!(d["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"].is_string());
    let f2 = c.file("dep2.yaml", &DEPLOY.replace("nginx:1.27", "nginx:1.28"));
    assert!(c.kubectl_ok(&["apply", "-f", &f2]).contains("deployment.apps/web configured"));
    let d2 = json(&c.kubectl_ok(&["get", "deploy", "web", "-o", "json"]));
    assert_eq!(d2["spec"]["template"]["spec"]["containers"][0]["image"], "nginx:1.28");
    assert_eq!(d2["metadata"]["generation"], 2);
    assert_eq!(d2["metadata"]["uid"], d["metadata"]["uid"]);
    let rv1: i64 = d["metadata"]["resourceVersion"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
    let rv2: i64 = d2["metadata"]["resourceVersion"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
    assert!(rv2 > rv1, "resourceVersion grows: {rv1} -> {rv2}");
    // Applying the same file again changes nothing.
    assert!(c.kubectl_ok(&["apply", "-f", &f2]).contains("unchanged"));
    let wide = c.kubectl_ok(&["get", "deploy", "-o", "wide"]);
    let header: Vec<&str> = wide.lines().next().unwrap_or("").split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE", "CONTAINERS", "IMAGES", "SELECTOR"]);
    assert!(wide.contains("nginx:1.28") && wide.contains("app=web"), "{wide}");
}

#[test]
fn get_output_formats_selectors_and_chunking() {
    let c = up();
    for i in 0..7 {
        let tier = if i % 2 == 0 { "fe" } else { "be" };
        c.kubectl_ok(&["apply", "-f", &c.file(&format!("cm{i}.yaml"), &format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm{i}\n  labels: {{tier: {tier}}}\ndata:\n  k: v{i}\n"))]);
    }
    let names = c.kubectl_ok(&["get", "cm", "-l", "tier=fe", "-o", "name"]);
    assert_eq!(names.lines().count(), 4, "{names}");
    // notin also selects objects without the label, such as kube-root-ca.crt once the
    // ServiceAccount controller has made it.
    let notin = c.kubectl_ok(&["get", "cm", "-l", "tier notin (fe)", "-o", "name"]);
    assert_eq!(notin.lines().filter(|l| l.starts_with("configmap/cm")).count(), 3, "{notin}");
    let tiered = c.kubectl_ok(&["get", "cm", "-l", "tier,tier notin (fe)", "-o", "name"]);
    assert_eq!(tiered.lines().count(), 3, "{tiered}");
    let chunked = c.kubectl_ok(&["get", "cm", "--chunk-size=2", "-l", "tier", "-o", "name"]);
    assert_eq!(chunked.lines().count(), 7, "{chunked}");
    let jp = c.kubectl_ok(&["get", "cm", "cm3", "-o", "jsonpath={.data.k}"]);
    assert_eq!(jp, "v3");
    let cc = c.kubectl_ok(&["get", "cm", "-l", "tier=be", "-o", "custom-columns=N:.metadata.name,V:.data.k", "--sort-by=.data.k"]);
    assert_eq!(cc.lines().collect::<Vec<_>>(), ["N     V", "cm1   v1", "cm3   v3", "cm5   v5"]);
    let fs = c.kubectl_ok(&["get", "cm", "--field-selector", "metadata.name=cm2", "-o", "name"]);
    assert_eq!(fs.trim(), "configmap/cm2");
    let labels = c.kubectl_ok(&["get", "cm", "cm0", "--show-labels"]);
    assert!(labels.lines().next().unwrap_or("").contains("LABELS") && labels.contains("tier=fe"), "{labels}");
    let all = c.kubectl_ok(&["get", "cm", "-A", "-l", "tier"]);
    assert!(all.lines().next().unwrap_or("").starts_with("NAMESPACE"), "{all}");
    let y = c.kubectl_ok(&["get", "cm", "cm0", "-o", "yaml"]);
    assert!(y.contains("kind: ConfigMap") && y.contains("resourceVersion:"), "{y}");
    let bad = c.kubectl_err(&["get", "pods", "--field-selector", "spec.bogus=1"]);
    assert!(bad.contains("field label not supported: spec.bogus"), "{bad}");
}

#[test]
fn field_validation_is_strict_by_default_warns_when_asked_and_stores_nothing_bad() {
    let c = up();
    let f = c.file("bad.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bad\n  bogusField: 1\ndata: {a: b}\n");
    let err = c.kubectl_err(&["create", "-f", &f]);
    assert!(err.contains("strict decoding error: unknown field \"metadata.bogusField\""), "{err}");
    assert!(c.kubectl_err(&["get", "cm", "bad"]).contains("configmaps \"bad\" not found"));
    let out = c.kubectl(&["create", "-f", &f, "--validate=warn"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Warning: unknown field \"metadata.bogusField\""), "{}", String::from_utf8_lossy(&out.stderr));
    let stored = json(&c.kubectl_ok(&["get", "cm", "bad", "-o", "json"]));
    assert!(stored["metadata"].get("bogusField").is_none());
    // Names must be DNS-1123.
    let f = c.file("badname.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad_Name\n");
    let err = c.kubectl_err(&["create", "-f", &f]);
    assert!(err.contains("Invalid value: \"Bad_Name\"") && err.contains("RFC 1123"), "{err}");
    // Wrong types are a bad request, not a crash.
    let f = c.file("badtype.yaml", "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: x\nspec:\n  replicas: lots\n");
    let err = c.kubectl_err(&["create", "-f", &f]);
    assert!(err.contains("BadRequest") || err.contains("cannot be handled"), "{err}");
    let err = c.kubectl_err(&["create", "-f", &c.file("dup.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bad\n")]);
    assert!(err.contains("AlreadyExists") && err.contains("configmaps \"bad\" already exists"), "{err}");
}

#[test]
fn patch_types_label_annotate_scale_and_replace_conflicts() {
    let c = up();
    c.kubectl_ok(&["apply", "-f", &c.file("dep.yaml", DEPLOY)]);
    c.kubectl_ok(&["patch", "deploy", "web", "-p", r#"{"spec":{"template":{"spec":{"containers":[{"name":"nginx","image":"nginx:2"}]}}}}"#]);
    c.kubectl_ok(&["patch", "deploy", "web", "--type=merge", "-p", r#"{"metadata":{"annotations":{"a":"1"}}}"#]);
    c.kubectl_ok(&["patch", "deploy", "web", "--type=json", "-p", r#"[{"op":"replace","path":"/spec/replicas","value":4}]"#]);
    let d = json(&c.kubectl_ok(&["get", "deploy", "web", "-o", "json"]));
    assert_eq!(d["spec"]["template"]["spec"]["containers"].as_array().map(Vec::len), Some(1), "strategic patch merges by name");
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["image"], "nginx:2");
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"], 80);
    assert_eq!(d["metadata"]["annotations"]["a"], "1");
    assert_eq!(d["spec"]["replicas"], 4);
    let err = c.kubectl_err(&["patch", "deploy", "web", "--type=json", "-p", r#"[{"op":"test","path":"/spec/replicas","value":9}]"#]);
    assert!(!err.is_empty());
    c.kubectl_ok(&["label", "deploy", "web", "tier=fe"]);
    c.kubectl_ok(&["annotate", "deploy", "web", "note=hi"]);
    assert!(c.kubectl_err(&["label", "deploy", "web", "tier=be"]).contains("already has a value"));
    c.kubectl_ok(&["label", "deploy", "web", "tier=be", "--overwrite"]);
    c.kubectl_ok(&["scale", "deploy", "web", "--replicas=2"]);
    let scale = json(&c.kubectl_ok(&["get", "--raw", "/apis/apps/v1/namespaces/default/deployments/web/scale"]));
    assert_eq!(scale["spec"]["replicas"], 2);
    assert_eq!(scale["status"]["selector"], "app=web");
    // --current-replicas sends a PUT to /scale without a Content-Type.
    c.kubectl_ok(&["scale", "deploy", "web", "--current-replicas=2", "--replicas=5"]);
    let err = c.kubectl_err(&["scale", "deploy", "web", "--current-replicas=2", "--replicas=6"]);
    assert!(err.contains("Expected replicas to be 2, was 5"), "{err}");
    // replace with a stale resourceVersion is a conflict.
    let mut stale = d.clone();
    stale["spec"]["replicas"] = serde_json::json!(7);
    let err = c.kubectl_err(&["replace", "-f", &c.file("stale.json", &stale.to_string())]);
    assert!(err.contains("Operation cannot be fulfilled on deployments.apps \"web\": the object has been modified"), "{err}");
    let d = json(&c.kubectl_ok(&["get", "deploy", "web", "-o", "json"]));
    assert_eq!(d["metadata"]["labels"]["tier"], "be");
    assert_eq!(d["spec"]["replicas"], 5);
}

#[test]
fn server_side_apply_creates_tracks_managers_and_reports_conflicts() {
    let c = up();
    let f = c.file("dep.yaml", DEPLOY);
    assert!(c.kubectl_ok(&["apply", "--server-side", "-f", &f]).contains("serverside-applied"));
    let d = json(&c.kubectl_ok(&["get", "deploy", "web", "-o", "json", "--show-managed-fields"]));
    let mf = d["metadata"]["managedFields"].as_array().cloned().unwrap_or_default();
    assert!(mf.iter().any(|m| m["manager"] == "kubectl" && m["operation"] == "Apply"), "{mf:?}");
    // Another manager takes spec.replicas...
    c.kubectl_ok(&["scale", "deploy", "web", "--replicas=5"]);
    // ...so re-applying a different value conflicts, unless forced.
    let f2 = c.file("dep2.yaml", &DEPLOY.replace("replicas: 3", "replicas: 4"));
    let err = c.kubectl_err(&["apply", "--server-side", "-f", &f2]);
    assert!(err.contains("conflict") && err.contains(".spec.replicas"), "{err}");
    c.kubectl_ok(&["apply", "--server-side", "--force-conflicts", "-f", &f2]);
    let d = json(&c.kubectl_ok(&["get", "deploy", "web", "-o", "json"]));
    assert_eq!(d["spec"]["replicas"], 4);
    // Dropping a field from the applied config removes it.
    let f3 = c.file("dep3.yaml", &DEPLOY.replace("  labels: {app: web}\nspec:", "spec:"));
    c.kubectl_ok(&["apply", "--server-side", "--force-conflicts", "-f", &f3]);
    let d = json(&c.kubectl_ok(&["get", "deploy", "web", "-o", "json"]));
    assert!(d["metadata"]["labels"].get("app").is_none(), "{}", d["metadata"]);
}

#[test]
fn finalizers_hold_deletion_until_removed_and_delete_waits_for_it() {
    let c = up();
    c.kubectl_ok(&["apply", "-f", &c.file("cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: held\n  finalizers: [example.com/hold]\n")]);
    c.kubectl_ok(&["delete", "cm", "held", "--wait=false"]);
    let d = json(&c.kubectl_ok(&["get", "cm", "held", "-o", "json"]));
    assert!(d["metadata"]["deletionTimestamp"].is_string(), "{d}");
    let err = c.kubectl_err(&["patch", "cm", "held", "--type=merge", "-p", r#"{"metadata":{"finalizers":["example.com/hold","x/y"]}}"#]);
    assert!(err.contains("no new finalizers"), "{err}");
    // `kubectl delete` (waiting) returns once the finalizer goes.
    let waiter = c.kubectl_cmd("n2", &["delete", "cm", "held", "--timeout=30s"]).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("kubectl");
    std::thread::sleep(Duration::from_millis(1500));
    c.kubectl_ok(&["patch", "cm", "held", "--type=json", "-p", r#"[{"op":"remove","path":"/metadata/finalizers"}]"#]);
    let out = waiter.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(c.kubectl_err(&["get", "cm", "held"]).contains("not found"));
}

#[test]
fn watch_across_a_leader_kill_sees_every_change_in_order() {
    let c = up();
    let leader = c.leader().expect("leader");
    let follower = ["n1", "n2", "n3"].into_iter().find(|n| *n != leader).expect("follower").to_string();
    let mut w = c
        .kubectl_cmd(&follower, &["get", "cm", "-w", "-o", "custom-columns=N:.metadata.name", "--no-headers", "--request-timeout=0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl -w");
    std::thread::sleep(Duration::from_secs(1));
    c.kubectl_at(&follower, &["create", "-f", &c.file("a.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: before-kill}\n")]);
    c.script_ok(&["kill", &leader]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = c.kubectl_at(&follower, &["apply", "-f", &c.file("b.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: after-kill}\n")]);
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "no write after the leader kill: {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    let _ = w.kill();
    let out = w.wait_with_output().expect("watch output");
    let text = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    assert!(names.contains(&"kube-root-ca.crt") || !names.is_empty());
    let a = names.iter().position(|n| *n == "before-kill").unwrap_or_else(|| panic!("before-kill missing: {names:?}"));
    let b = names.iter().position(|n| *n == "after-kill").unwrap_or_else(|| panic!("after-kill missing: {names:?}"));
    assert!(a < b);
    assert_eq!(names.iter().filter(|n| **n == "before-kill").count(), 1, "no repeats: {names:?}");
}

#[test]
fn reads_on_any_replica_see_writes_made_through_another() {
    let c = up();
    for i in 0..20 {
        let name = format!("lin{i}");
        let writer = ["n1", "n2", "n3"][i % 3];
        let reader = ["n1", "n2", "n3"][(i + 1) % 3];
        let out = c.kubectl_at(writer, &["create", "-f", &c.file("l.yaml", &format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\n"))]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let out = c.kubectl_at(reader, &["get", "cm", &name, "-o", "name"]);
        assert!(out.status.success(), "replica {reader} did not see {name} written via {writer}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn services_get_unique_cluster_ips_and_node_ports_released_on_delete() {
    let c = up();
    let svc = |name: &str, extra: &str| format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  selector: {{app: {name}}}\n  ports:\n  - port: 80\n{extra}");
    c.kubectl_ok(&["apply", "-f", &c.file("s1.yaml", &svc("s1", ""))]);
    c.kubectl_ok(&["apply", "-f", &c.file("s2.yaml", &svc("s2", "  type: NodePort\n"))]);
    let s1 = json(&c.kubectl_ok(&["get", "svc", "s1", "-o", "json"]));
    let s2 = json(&c.kubectl_ok(&["get", "svc", "s2", "-o", "json"]));
    let ip1 = s1["spec"]["clusterIP"].as_str().unwrap_or("").to_string();
    assert!(ip1.starts_with("10.96."), "{ip1}");
    assert_ne!(s1["spec"]["clusterIP"], s2["spec"]["clusterIP"]);
    assert_eq!(s1["spec"]["ports"][0]["targetPort"], 80);
    let np = s2["spec"]["ports"][0]["nodePort"].as_i64().unwrap_or(0);
    assert!((30000..=32767).contains(&np), "{np}");
    let table = c.kubectl_ok(&["get", "svc", "s2"]);
    assert!(table.contains(&format!("80:{np}/TCP")), "{table}");
    // The same IP cannot be taken twice...
    let err = c.kubectl_err(&["apply", "-f", &c.file("s3.yaml", &svc("s3", &format!("  clusterIP: {ip1}\n")))]);
    assert!(err.contains("provided IP is already allocated"), "{err}");
    // ...until its Service is deleted.
    c.kubectl_ok(&["delete", "svc", "s1"]);
    c.kubectl_ok(&["apply", "-f", &c.file("s3.yaml", &svc("s3", &format!("  clusterIP: {ip1}\n")))]);
    let ip = c.kubectl_ok(&["get", "svc", "kubernetes", "-o", "jsonpath={.spec.clusterIP}"]);
    assert_eq!(ip, "10.96.0.1");
}

#[test]
fn dry_run_and_namespaces_and_errors_use_kubernetes_wording() {
    let c = up();
    let out = c.kubectl_ok(&["apply", "-f", &c.file("d.yaml", DEPLOY), "--dry-run=server"]);
    assert!(out.contains("(server dry run)"), "{out}");
    assert!(c.kubectl_err(&["get", "deploy", "web"]).contains("deployments.apps \"web\" not found"));
    let err = c.kubectl_err(&["apply", "-n", "nosuch", "-f", &c.file("d.yaml", DEPLOY)]);
    assert!(err.contains("namespaces \"nosuch\" not found"), "{err}");
    c.kubectl_ok(&["apply", "-f", &c.file("ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: team-a}\n")]);
    c.kubectl_ok(&["apply", "-n", "team-a", "-f", &c.file("d.yaml", DEPLOY)]);
    let all = c.kubectl_ok(&["get", "deploy", "-A", "-o", "custom-columns=NS:.metadata.namespace,N:.metadata.name", "--no-headers"]);
    assert_eq!(all.trim(), "team-a   web");
    let bad = c.kubectl_err(&["get", "deploy", "-l", "a in (b"]);
    assert!(!bad.is_empty());
    let raw = c.kubectl_err(&["get", "--raw", "/api/v1/namespaces/default/configmaps?resourceVersion=abc"]);
    assert!(raw.contains("BadRequest") || raw.contains("invalid resource version"), "{raw}");
    let gone = c.kubectl_err(&["get", "--raw", "/api/v1/nosuch"]);
    assert!(gone.contains("NotFound") || gone.contains("could not find"), "{gone}");
}

#[test]
fn rbac_forbids_a_user_without_rights_until_a_rolebinding_grants_them() {
    let c = up();
    let alice = c.path().join("alice.kubeconfig");
    let server = format!("https://{}:6443", c.ip("n2"));
    let out = std::process::Command::new(common::kuberaft_bin())
        .args(["kubeconfig", "--pki"])
        .arg(c.path().join("pki"))
        .args(["--server", &server, "--user", "alice", "--groups", "devs", "--out"])
        .arg(&alice)
        .output()
        .expect("kuberaft kubeconfig");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let as_alice = |args: &[&str]| {
        std::process::Command::new("kubectl").arg("--kubeconfig").arg(&alice).arg("--cache-dir").arg(c.path().join("kcache-alice")).args(args).output().expect("kubectl")
    };
    let out = as_alice(&["get", "pods"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(r#"pods is forbidden: User "alice" cannot list resource "pods" in API group "" in the namespace "default""#), "{err}");
    c.kubectl_ok(&["apply", "-f", &c.file("role.yaml", "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: pod-reader}\nrules:\n- apiGroups: [\"\"]\n  resources: [pods]\n  verbs: [get, list, watch]\n")]);
    c.kubectl_ok(&["apply", "-f", &c.file("rb.yaml", "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: alice-reads-pods}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}\nsubjects:\n- {apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}\n")]);
    let out = as_alice(&["get", "pods"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Still nothing else, and nothing outside the namespace.
    let out = as_alice(&["get", "configmaps"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot list resource \"configmaps\""));
    let out = as_alice(&["get", "pods", "-n", "kube-system"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("in the namespace \"kube-system\""));
    // A group binding to a bootstrap ClusterRole works too.
    c.kubectl_ok(&["apply", "-f", &c.file("crb.yaml", "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: devs-view}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}\nsubjects:\n- {apiGroup: rbac.authorization.k8s.io, kind: Group, name: devs}\n")]);
    let out = as_alice(&["get", "configmaps", "-n", "kube-system"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = as_alice(&["get", "secrets"]);
    assert!(!out.status.success(), "view cannot read secrets");
    // No credentials at all: 401.
    let anon = c.path().join("anon.kubeconfig");
    std::fs::write(&anon, format!("apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"{server}\", insecure-skip-tls-verify: true}}\nusers:\n- name: t\n  user: {{token: wrong}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: t}}\ncurrent-context: c\n")).expect("write");
    let out = std::process::Command::new("kubectl").arg("--kubeconfig").arg(&anon).arg("--cache-dir").arg(c.path().join("kcache-anon")).args(["get", "pods"]).output().expect("kubectl");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error: You must be logged in to the server"), "{err}");
}

#[test]
fn a_watch_from_a_compacted_revision_ends_with_410_expired() {
    let c = up();
    for i in 0..5 {
        c.kubectl_ok(&["apply", "-f", &c.file("c.yaml", &format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c{i}}}\n"))]);
    }
    let rv: i64 = c.kubectl_ok(&["get", "cm", "c4", "-o", "jsonpath={.metadata.resourceVersion}"]).parse().expect("rv");
    c.etcdctl_ok(&["compaction", &rv.to_string()]);
    let out = c.kubectl_ok(&["get", "--raw", "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=2&timeoutSeconds=5"]);
    let ev: serde_json::Value = serde_json::from_str(out.lines().next().unwrap_or("")).expect("event JSON");
    assert_eq!(ev["type"], "ERROR");
    assert_eq!(ev["object"]["code"], 410);
    assert_eq!(ev["object"]["reason"], "Expired");
    assert!(ev["object"]["message"].as_str().unwrap_or("").starts_with("too old resource version: 2"), "{ev}");
    // A list at an exact compacted revision is 410 too; the latest works.
    let err = c.kubectl_err(&["get", "--raw", "/api/v1/namespaces/default/configmaps?resourceVersion=2&resourceVersionMatch=Exact"]);
    assert!(err.contains("Expired") || err.contains("410") || err.contains("too old"), "{err}");
    // A watch from the list RV gets only later changes, in Table form for `kubectl get -w`.
    let list = json(&c.kubectl_ok(&["get", "--raw", "/api/v1/namespaces/default/configmaps"]));
    let lrv = list["metadata"]["resourceVersion"].as_str().unwrap_or("").to_string();
    // (Selected by label: the controllers may add their own ConfigMaps meanwhile.)
    let mut w = c.kubectl_cmd("n3", &["get", "--raw", &format!("/api/v1/namespaces/default/configmaps?watch=1&labelSelector=w&resourceVersion={lrv}&timeoutSeconds=4")]).stdout(std::process::Stdio::piped()).spawn().expect("watch");
    std::thread::sleep(Duration::from_millis(500));
    c.kubectl_ok(&["apply", "-f", &c.file("c.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: late, labels: {w: x}}\n")]);
    let _ = w.wait();
    let mut text = String::new();
    use std::io::Read;
    w.stdout.take().expect("stdout").read_to_string(&mut text).expect("read");
    let evs: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert_eq!(evs.len(), 1, "{text}");
    assert_eq!(evs[0]["type"], "ADDED");
    assert_eq!(evs[0]["object"]["metadata"]["name"], "late");
}

const CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: crontabs.stable.example.com
spec:
  group: stable.example.com
  scope: Namespaced
  names: {plural: crontabs, singular: crontab, kind: CronTab, shortNames: [ct]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Spec, type: string, jsonPath: .spec.cronSpec}
    - {name: Replicas, type: integer, jsonPath: .spec.replicas}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [cronSpec]
            properties:
              cronSpec: {type: string}
              image: {type: string}
              replicas: {type: integer, minimum: 1, maximum: 10, default: 1}
          status:
            type: object
            properties:
              phase: {type: string}
"#;

#[test]
fn custom_resources_are_served_validated_pruned_and_printed_on_every_replica() {
    let c = up();
    c.kubectl_ok(&["apply", "-f", &c.file("crd.yaml", CRD)]);
    let crd = json(&c.kubectl_ok(&["get", "crd", "crontabs.stable.example.com", "-o", "json"]));
    let established = crd["status"]["conditions"].as_array().map(|a| a.iter().any(|c| c["type"] == "Established" && c["status"] == "True")).unwrap_or(false);
    assert!(established, "{}", crd["status"]);
    // Every replica learns the new type (each follows the CRDs through its own watch).
    let deadline = Instant::now() + Duration::from_secs(10);
    for n in ["n1", "n2", "n3"] {
        loop {
            let out = c.kubectl_at(n, &["get", "crontabs"]);
            if out.status.success() {
                break;
            }
            assert!(Instant::now() < deadline, "{n} does not serve crontabs: {}", String::from_utf8_lossy(&out.stderr));
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let ct = "apiVersion: stable.example.com/v1\nkind: CronTab\nmetadata: {name: nightly}\nspec:\n  cronSpec: '0 3 * * *'\n  image: backup:1\n";
    c.kubectl_ok(&["apply", "-f", &c.file("ct.yaml", ct)]);
    let obj = json(&c.kubectl_ok(&["get", "ct", "nightly", "-o", "json"]));
    assert_eq!(obj["spec"]["replicas"], 1, "schema default applied");
    let table = c.kubectl_at("n3", &["get", "crontabs"]);
    let text = String::from_utf8_lossy(&table.stdout);
    let header: Vec<&str> = text.lines().next().unwrap_or("").split_whitespace().collect();
    assert_eq!(header, ["NAME", "SPEC", "REPLICAS", "AGE"], "{text}");
    assert!(text.contains("0 3 * * *"), "{text}");
    // Schema violations are 422 with the field; unknown fields are refused under Strict.
    let bad = c.kubectl_err(&["apply", "-f", &c.file("bad.yaml", &ct.replace("image: backup:1", "replicas: 11"))]);
    assert!(bad.contains("spec.replicas") && bad.contains("less than or equal to 10"), "{bad}");
    let unknown = c.kubectl_err(&["apply", "-f", &c.file("unk.yaml", &format!("{ct}  bogus: 1\n"))]);
    assert!(unknown.contains("unknown field \"spec.bogus\""), "{unknown}");
    let missing = c.kubectl_err(&["apply", "-f", &c.file("miss.yaml", "apiVersion: stable.example.com/v1\nkind: CronTab\nmetadata: {name: x}\nspec: {image: a}\n")]);
    assert!(missing.contains("spec.cronSpec") && missing.contains("Required value"), "{missing}");
    // Merge patch works; strategic merge patch is refused for custom resources (as upstream).
    c.kubectl_ok(&["patch", "ct", "nightly", "--type=merge", "-p", r#"{"spec":{"replicas":3}}"#]);
    let err = c.kubectl_err(&["patch", "ct", "nightly", "--type=strategic", "-p", r#"{"spec":{"replicas":4}}"#]);
    assert!(err.contains("strategic") || err.contains("UnsupportedMediaType") || err.contains("415"), "{err}");
    let explain = c.kubectl_ok(&["explain", "crontab.spec"]);
    assert!(explain.contains("cronSpec"), "{explain}");
    c.kubectl_ok(&["delete", "ct", "nightly"]);
}

#[test]
fn service_account_tokens_authenticate_until_the_account_is_deleted() {
    let c = up();
    c.kubectl_ok(&["apply", "-f", &c.file("sa.yaml", "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: bot}\n")]);
    // TokenRequest through the raw API (kubectl create token sends protobuf).
    let req = c.file("tr.json", r#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{"expirationSeconds":3600}}"#);
    let out = c.kubectl_ok(&["create", "--raw", "/api/v1/namespaces/default/serviceaccounts/bot/token", "-f", &req]);
    let tr = json(&out);
    let token = tr["status"]["token"].as_str().expect("token").to_string();
    let server = format!("https://{}:6443", c.ip("n3"));
    let kc = c.path().join("bot.kubeconfig");
    std::fs::write(&kc, format!("apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"{server}\", certificate-authority: \"{}\"}}\nusers:\n- name: bot\n  user: {{token: \"{token}\"}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: bot, namespace: default}}\ncurrent-context: c\n", c.path().join("pki/ca.crt").display())).expect("write");
    let as_bot = |args: &[&str]| std::process::Command::new("kubectl").arg("--kubeconfig").arg(&kc).arg("--cache-dir").arg(c.path().join("kcache-bot")).args(args).output().expect("kubectl");
    let out = as_bot(&["get", "pods"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("User \"system:serviceaccount:default:bot\" cannot list resource \"pods\""), "{err}");
    c.kubectl_ok(&["apply", "-f", &c.file("rb.yaml", "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: bot-view}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}\nsubjects:\n- {kind: ServiceAccount, name: bot, namespace: default}\n")]);
    let out = as_bot(&["get", "pods"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    c.kubectl_ok(&["delete", "sa", "bot"]);
    let out = as_bot(&["get", "pods"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("You must be logged in"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn logs_exec_and_port_forward_are_proxied_to_the_node_with_the_apiserver_certificate() {
    let c = up();
    // A stand-in node daemon on an address the cluster's server certificate covers.
    let _node = c.fake_node("n6", "fake-1");
    c.kubectl_ok(&["apply", "-f", &c.file("pod.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: p1}\nspec:\n  nodeName: fake-1\n  containers:\n  - {name: app, image: busybox}\n  - {name: side, image: busybox}\n")]);
    let logs = c.kubectl_ok(&["logs", "p1", "-c", "side", "--tail=5"]);
    assert!(logs.contains("log line 1 of default/p1/side"), "{logs}");
    assert!(logs.contains("caller kuberaft"), "the node saw the apiserver's client certificate: {logs}");
    assert!(logs.contains("tailLines 5"), "{logs}");
    let err = c.kubectl_err(&["logs", "p1", "-c", "nope"]);
    assert!(err.contains("container nope is not valid for pod p1"), "{err}");
    let out = c.kubectl(&["exec", "p1", "-c", "app", "--", "echo", "hi"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ran echo hi in app for kuberaft\n");
    let out = c.kubectl(&["exec", "p1", "-c", "app", "--", "false"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("command terminated with exit code 1"), "{}", String::from_utf8_lossy(&out.stderr));
    // The Python client's exec (WebSocket v4/v5) through the same proxy, via another replica.
    let out = std::process::Command::new("/usr/bin/python3")
        .arg(common::repo_root().join("tests/clients/python_exec.py"))
        .arg(c.path().join("n3").join("kubeconfig"))
        .args(["p1", "app"])
        .output()
        .expect("python exec");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ran echo from python in app for kuberaft\n");
    // Port-forward in the channel protocol (Python, kube-rs): bytes both ways through the proxy.
    let out = std::process::Command::new("/usr/bin/python3")
        .arg(common::repo_root().join("tests/clients/python_portforward.py"))
        .arg(c.path().join("n2").join("kubeconfig"))
        .args(["p1", "8080"])
        .output()
        .expect("python port-forward");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "echo:ping");
    // A pod that is not scheduled has nowhere to stream from.
    c.kubectl_ok(&["apply", "-f", &c.file("pod2.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: p2}\nspec:\n  containers:\n  - {name: app, image: busybox}\n")]);
    let err = c.kubectl_err(&["logs", "p2"]);
    assert!(err.contains("does not have a host assigned"), "{err}");
}

#[test]
fn limit_ranges_default_container_resources_and_quotas_refuse_what_exceeds_them() {
    let c = up();
    c.kubectl_ok(&["apply", "-f", &c.file("lr.yaml", "apiVersion: v1\nkind: LimitRange\nmetadata: {name: defaults}\nspec:\n  limits:\n  - type: Container\n    default: {cpu: 500m, memory: 128Mi}\n    defaultRequest: {cpu: 100m}\n    max: {cpu: '1'}\n")]);
    c.kubectl_ok(&["apply", "-f", &c.file("q.yaml", "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: small}\nspec:\n  hard: {pods: '2', requests.cpu: 250m, count/secrets: '3'}\n")]);
    let pod = |n: &str| format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {n}}}\nspec:\n  containers:\n  - {{name: app, image: busybox}}\n");
    c.kubectl_ok(&["apply", "-f", &c.file("p1.yaml", &pod("p1"))]);
    let p1 = json(&c.kubectl_ok(&["get", "pod", "p1", "-o", "json"]));
    let r = &p1["spec"]["containers"][0]["resources"];
    assert_eq!(r["limits"]["cpu"], "500m");
    assert_eq!(r["limits"]["memory"], "128Mi");
    assert_eq!(r["requests"]["cpu"], "100m");
    assert_eq!(r["requests"]["memory"], "128Mi", "requests default to the default limits");
    assert_eq!(p1["status"]["qosClass"], "Burstable");
    c.kubectl_ok(&["apply", "-f", &c.file("p2.yaml", &pod("p2"))]);
    // 100m + 100m used; a third pod would be the third and exceed 250m.
    let err = c.kubectl_err(&["apply", "-f", &c.file("p3.yaml", &pod("p3"))]);
    assert!(err.contains("exceeded quota: small") && err.contains("pods=1") && err.contains("limited:"), "{err}");
    let q = json(&c.kubectl_ok(&["get", "quota", "small", "-o", "json"]));
    assert_eq!(q["status"]["used"]["pods"], "2", "{}", q["status"]);
    let big = c.kubectl_err(&["apply", "-f", &c.file("big.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: big}\nspec:\n  containers:\n  - name: app\n    image: busybox\n    resources: {limits: {cpu: '2'}}\n")]);
    assert!(big.contains("maximum cpu usage per Container is 1, but limit is 2"), "{big}");
    // Object counts: nothing puts secrets here, so three fit and the fourth does not.
    for i in 0..3 {
        c.kubectl_ok(&["create", "secret", "generic", &format!("q{i}")]);
    }
    let err = c.kubectl_err(&["create", "secret", "generic", "q3"]);
    assert!(err.contains("exceeded quota: small, requested: count/secrets=1, used: count/secrets=3, limited: count/secrets=3"), "{err}");
    // Deletes give the quota back, and the quota controller shows it in status.used.
    c.kubectl_ok(&["delete", "pod", "p1", "--grace-period=0", "--force"]);
    c.kubectl_ok(&["delete", "secret", "q0"]);
    let t = std::time::Instant::now();
    loop {
        let used = json(&c.kubectl_ok(&["get", "quota", "small", "-o", "json"]))["status"]["used"].clone();
        if used["pods"] == "1" && used["requests.cpu"] == "100m" && used["count/secrets"] == "2" {
            break;
        }
        assert!(t.elapsed() < std::time::Duration::from_secs(20), "status.used not recounted: {used}");
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    c.kubectl_ok(&["create", "secret", "generic", "q4"]);
    let described = c.kubectl_ok(&["describe", "quota", "small"]);
    assert!(described.lines().any(|l| l.split_whitespace().eq(["count/secrets", "3", "3"])), "{described}");
}

#[test]
fn concurrent_creates_through_every_replica_never_exceed_a_quota() {
    let c = up();
    c.kubectl_ok(&["apply", "-f", &c.file("q.yaml", "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: five}\nspec:\n  hard: {count/secrets: '5'}\n")]);
    let handles: Vec<_> = (0..12)
        .map(|i| {
            let args = c.kubectl_cmd(["n1", "n2", "n3"][i % 3], &["create", "--raw", "/api/v1/namespaces/default/secrets", "-f", &c.file(&format!("c{i}.json"), &format!(r#"{{"apiVersion":"v1","kind":"Secret","metadata":{{"name":"race{i}"}}}}"#))]);
            std::thread::spawn(move || {
                let mut args = args;
                args.output().map(|o| o.status.success()).unwrap_or(false)
            })
        })
        .collect();
    let ok = handles.into_iter().map(|h| h.join().unwrap_or(false)).filter(|x| *x).count();
    let stored = c.kubectl_ok(&["get", "secrets", "-o", "name"]).lines().filter(|l| l.contains("race")).count();
    assert_eq!(stored, ok, "every success is stored");
    assert_eq!(stored, 5, "exactly the quota");
}

#[test]
fn kubectl_create_generators_send_protobuf_and_work() {
    let c = up();
    c.kubectl_ok(&["create", "namespace", "gen"]);
    c.kubectl_ok(&["create", "configmap", "cm", "--from-literal=a=b", "-n", "gen"]);
    c.kubectl_ok(&["create", "secret", "generic", "s", "--from-literal=p=q", "-n", "gen"]);
    c.kubectl_ok(&["create", "serviceaccount", "sa", "-n", "gen"]);
    c.kubectl_ok(&["create", "deployment", "d", "--image=nginx:1.27", "--replicas=2", "-n", "gen"]);
    c.kubectl_ok(&["create", "job", "j", "--image=busybox", "-n", "gen", "--", "echo", "hi"]);
    c.kubectl_ok(&["create", "service", "clusterip", "svc", "--tcp=80:8080", "-n", "gen"]);
    c.kubectl_ok(&["create", "role", "r", "--verb=get,list", "--resource=pods", "-n", "gen"]);
    c.kubectl_ok(&["create", "rolebinding", "rb", "--role=r", "--user=bob", "-n", "gen"]);
    c.kubectl_ok(&["create", "quota", "q", "--hard=pods=10", "-n", "gen"]);
    c.kubectl_ok(&["create", "priorityclass", "high", "--value=1000"]);
    c.kubectl_ok(&["create", "poddisruptionbudget", "pdb", "--selector=app=d", "--min-available=1", "-n", "gen"]);
    let secret = json(&c.kubectl_ok(&["get", "secret", "s", "-n", "gen", "-o", "json"]));
    assert_eq!(secret["data"]["p"], "cQ==", "bytes arrive as base64");
    assert_eq!(secret["type"], "Opaque");
    let d = json(&c.kubectl_ok(&["get", "deploy", "d", "-n", "gen", "-o", "json"]));
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["image"], "nginx:1.27");
    assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
    let svc = json(&c.kubectl_ok(&["get", "svc", "svc", "-n", "gen", "-o", "json"]));
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);
    let job = json(&c.kubectl_ok(&["get", "job", "j", "-n", "gen", "-o", "json"]));
    assert_eq!(job["spec"]["template"]["spec"]["containers"][0]["command"], serde_json::json!(["echo", "hi"]));
    let rb = json(&c.kubectl_ok(&["get", "rolebinding", "rb", "-n", "gen", "-o", "json"]));
    assert_eq!(rb["subjects"][0]["apiGroup"], "rbac.authorization.k8s.io");
    let token = c.kubectl_ok(&["create", "token", "sa", "-n", "gen"]);
    assert_eq!(token.trim().split('.').count(), 3, "a JWT: {token}");
    // auth can-i and whoami (SelfSubjectAccessReview / SelfSubjectReview, protobuf too).
    assert_eq!(c.kubectl_ok(&["auth", "can-i", "delete", "nodes"]).trim(), "yes");
    let out = c.kubectl(&["auth", "can-i", "list", "pods", "-n", "gen", "--as=bob"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "yes", "{}", String::from_utf8_lossy(&out.stderr));
    let out = c.kubectl(&["auth", "can-i", "delete", "pods", "-n", "gen", "--as=bob"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no");
    let who = c.kubectl_ok(&["auth", "whoami", "-o", "json"]);
    assert_eq!(json(&who)["status"]["userInfo"]["username"], "admin");
    let err = c.kubectl_err(&["get", "secrets", "-n", "gen", "--as=bob"]);
    assert!(err.contains("User \"bob\" cannot list resource \"secrets\""), "{err}");
}

#[test]
fn edit_describe_explain_sort_and_table_watch_behave_like_kubernetes() {
    let c = up();
    c.kubectl_ok(&["apply", "-f", &c.file("dep.yaml", DEPLOY)]);
    // kubectl edit with a scripted editor.
    let editor = c.file("editor.sh", "#!/bin/sh\nsed -i 's/replicas: 3/replicas: 7/' \"$1\"\n");
    std::process::Command::new("chmod").args(["+x", &editor]).status().expect("chmod");
    let out = c.kubectl_cmd("n1", &["edit", "deploy", "web"]).env("EDITOR", &editor).env("KUBE_EDITOR", &editor).output().expect("edit");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(c.kubectl_ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]), "7");
    let desc = c.kubectl_ok(&["describe", "deploy", "web"]);
    assert!(desc.contains("Name:") && desc.contains("web") && desc.contains("nginx:1.27") && desc.contains("Replicas:"), "{desc}");
    let explain = c.kubectl_ok(&["explain", "deployment.spec.strategy"]);
    assert!(explain.contains("rollingUpdate"), "{explain}");
    for (i, n) in ["b", "c", "a"].iter().enumerate() {
        c.kubectl_ok(&["apply", "-f", &c.file("s.yaml", &format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: sort-{n}, labels: {{sort: x}}}}\ndata: {{order: '{i}'}}\n"))]);
    }
    let sorted = c.kubectl_ok(&["get", "cm", "-l", "sort", "--sort-by=.metadata.name", "-o", "name"]);
    assert_eq!(sorted.lines().collect::<Vec<_>>(), ["configmap/sort-a", "configmap/sort-b", "configmap/sort-c"]);
    // `kubectl get -w` in its default (Table) form prints the header once, then rows.
    let mut w = c.kubectl_cmd("n2", &["get", "cm", "-l", "sort", "-w"]).stdout(std::process::Stdio::piped()).spawn().expect("watch");
    std::thread::sleep(Duration::from_millis(800));
    c.kubectl_ok(&["apply", "-f", &c.file("s.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: sort-d, labels: {sort: x}}\ndata: {a: b, c: d}\n")]);
    std::thread::sleep(Duration::from_millis(800));
    let _ = w.kill();
    let out = w.wait_with_output().expect("watch output");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.first().map(|l| l.starts_with("NAME") && l.contains("DATA")).unwrap_or(false), "{text}");
    assert_eq!(lines.iter().filter(|l| l.starts_with("NAME")).count(), 1, "{text}");
    assert!(lines.iter().any(|l| l.starts_with("sort-d") && l.split_whitespace().nth(1) == Some("2")), "{text}");
    // Force deletion returns at once.
    let out = c.kubectl(&["delete", "deploy", "web", "--force", "--grace-period=0"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Immediate deletion does not wait"), "{}", String::from_utf8_lossy(&out.stderr));
    // Deleting a namespace marks it Terminating; the namespace controller deletes its contents
    // and then the namespace (held here by a finalizer on one object, then released).
    c.kubectl_ok(&["create", "namespace", "doomed"]);
    c.kubectl_ok(&["apply", "-n", "doomed", "-f", &c.file("held.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: held, finalizers: [example.com/hold]}\n")]);
    c.kubectl_ok(&["delete", "namespace", "doomed", "--wait=false"]);
    assert_eq!(c.kubectl_ok(&["get", "ns", "doomed", "-o", "jsonpath={.status.phase}"]), "Terminating");
    let err = c.kubectl_err(&["create", "configmap", "x", "-n", "doomed"]);
    assert!(err.contains("because it is being terminated"), "{err}");
    c.kubectl_ok(&["patch", "cm", "held", "-n", "doomed", "--type=json", "-p", r#"[{"op":"remove","path":"/metadata/finalizers"}]"#]);
    let out = c.kubectl(&["wait", "--for=delete", "namespace/doomed", "--timeout=60s"]);
    assert!(out.status.success(), "the namespace was not removed: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_deposed_leader_never_serves_a_stale_object() {
    let c = up();
    for round in 0..2 {
        let old = c.leader().expect("leader");
        let name = format!("stale{round}");
        c.kubectl_ok(&["apply", "-f", &c.file("s.yaml", &format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\ndata: {{v: '1'}}\n"))]);
        // Freeze the leader; the others elect a new one and change the object.
        let pid = std::fs::read_to_string(c.path().join(&old).join("pid")).expect("pid").trim().to_string();
        assert!(std::process::Command::new("kill").args(["-STOP", &pid]).status().expect("kill").success());
        let other = ["n1", "n2", "n3"].into_iter().find(|n| *n != old).expect("other");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = c.kubectl_at(other, &["patch", "cm", &name, "--type=merge", "-p", r#"{"data":{"v":"2"}}"#, "--request-timeout=3s"]);
            if out.status.success() {
                break;
            }
            assert!(Instant::now() < deadline, "no new leader took the write: {}", String::from_utf8_lossy(&out.stderr));
        }
        // Wake the old leader and read through it at once: it may still think it leads, but a
        // read must be confirmed by a quorum, so it sees "2" or fails; never "1".
        assert!(std::process::Command::new("kill").args(["-CONT", &pid]).status().expect("kill").success());
        let out = c.kubectl_at(&old, &["get", "cm", &name, "-o", "jsonpath={.data.v}", "--request-timeout=10s"]);
        let v = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(v == "2" || !out.status.success(), "stale read from the deposed leader {old}: {v:?}");
        // And a watch from the list it serves starts after the change.
        let out = c.kubectl_at(&old, &["get", "cm", &name, "-o", "jsonpath={.data.v}", "--request-timeout=10s"]);
        assert_eq!(String::from_utf8_lossy(&out.stdout), "2", "{}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn a_node_may_change_only_its_own_node_lease_and_pods() {
    let c = up();
    let kc = c.path().join("node-a.kubeconfig");
    let server = format!("https://{}:6443", c.ip("n1"));
    let out = std::process::Command::new(common::kuberaft_bin()).args(["kubeconfig", "--pki"]).arg(c.path().join("pki")).args(["--server", &server, "--node", "node-a", "--out"]).arg(&kc).output().expect("kubeconfig");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let as_node = |args: &[&str]| std::process::Command::new("kubectl").arg("--kubeconfig").arg(&kc).arg("--cache-dir").arg(c.path().join("kcache-node")).args(args).output().expect("kubectl");
    let node = |n: &str| format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {n}}}\n");
    let out = as_node(&["apply", "-f", &c.file("na.yaml", &node("node-a"))]);
    assert!(out.status.success(), "a node registers itself: {}", String::from_utf8_lossy(&out.stderr));
    c.kubectl_ok(&["apply", "-f", &c.file("nb.yaml", &node("node-b"))]);
    let out = as_node(&["label", "node", "node-b", "x=y"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("node 'node-a' cannot modify node"), "{err}");
    assert!(as_node(&["label", "node", "node-a", "x=y"]).status.success());
    let lease = |n: &str| format!("apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {{name: {n}, namespace: kube-node-lease}}\nspec: {{holderIdentity: {n}, leaseDurationSeconds: 40}}\n");
    assert!(as_node(&["apply", "-f", &c.file("la.yaml", &lease("node-a"))]).status.success());
    let out = as_node(&["apply", "-f", &c.file("lb.yaml", &lease("node-b"))]);
    assert!(!out.status.success(), "another node's lease");
    let pod = |n: &str, node: &str| format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {n}}}\nspec:\n  nodeName: {node}\n  containers:\n  - {{name: c, image: busybox}}\n");
    c.kubectl_ok(&["apply", "-f", &c.file("pa.yaml", &pod("pa", "node-a"))]);
    c.kubectl_ok(&["apply", "-f", &c.file("pb.yaml", &pod("pb", "node-b"))]);
    let status = r#"{"status":{"phase":"Running"}}"#;
    let out = as_node(&["patch", "pod", "pa", "--subresource=status", "--type=merge", "-p", status]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = as_node(&["patch", "pod", "pb", "--subresource=status", "--type=merge", "-p", status]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("can only modify pods bound to it"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(c.kubectl_ok(&["get", "pod", "pa", "-o", "jsonpath={.status.phase}"]), "Running");
    assert_eq!(c.kubectl_ok(&["get", "pod", "pb", "-o", "jsonpath={.status.phase}"]), "Pending");
    // Reading is allowed; listing secrets is not, and only its pods' secrets can be read.
    assert!(as_node(&["get", "pods", "-A"]).status.success());
    assert!(!as_node(&["get", "secrets", "-A"]).status.success());
    c.kubectl_ok(&["create", "secret", "generic", "mine", "--from-literal=a=b"]);
    c.kubectl_ok(&["create", "secret", "generic", "other", "--from-literal=a=b"]);
    c.kubectl_ok(&["apply", "-f", &c.file("pc.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: pc}\nspec:\n  nodeName: node-a\n  containers:\n  - {name: c, image: busybox}\n  volumes:\n  - {name: s, secret: {secretName: mine}}\n")]);
    assert!(as_node(&["get", "secret", "mine"]).status.success());
    let out = as_node(&["get", "secret", "other"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no relationship"), "{}", String::from_utf8_lossy(&out.stderr));
    // Tokens only for its own pods' service accounts.
    c.kubectl_ok(&["create", "serviceaccount", "ctrl", "-n", "kube-system"]);
    let tr = c.file("tr.json", r#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{}}"#);
    let out = as_node(&["create", "--raw", "/api/v1/namespaces/kube-system/serviceaccounts/ctrl/token", "-f", &tr]);
    assert!(!out.status.success(), "a node minted a token for a service account it does not run");
}

#[test]
fn bad_requests_get_kubernetes_status_errors_and_store_nothing() {
    let c = up();
    let pki = c.path().join("pki");
    let base = format!("https://{}:6443/api/v1/namespaces/default/configmaps", c.ip("n2"));
    // curl with the admin certificate: status code and body.
    let curl = |method: &str, url: &str, ctype: Option<&str>, body: &[u8]| -> (u16, serde_json::Value) {
        let data = c.path().join("body.bin");
        std::fs::write(&data, body).expect("write body");
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", method]).arg("--cacert").arg(pki.join("ca.crt")).arg("--cert").arg(pki.join("client.crt")).arg("--key").arg(pki.join("client.key"));
        match ctype {
            Some(t) => cmd.args(["-H", &format!("Content-Type: {t}")]),
            None => cmd.args(["-H", "Content-Type:"]),
        };
        let out = cmd.arg("--data-binary").arg(format!("@{}", data.display())).arg(url).output().expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
    };
    let (code, st) = curl("POST", &base, Some("application/json"), b"{\"apiVersion\":\"v1\",");
    assert_eq!((code, st["kind"].as_str(), st["reason"].as_str()), (400, Some("Status"), Some("BadRequest")), "{st}");
    let (code, st) = curl("POST", &base, Some("application/yaml"), b"kind: [unclosed");
    assert_eq!(code, 400, "{st}");
    let (code, st) = curl("POST", &base, Some("application/json"), br#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"x"}}"#);
    assert_eq!(code, 400, "wrong apiVersion/kind for the URL: {st}");
    // No Content-Type is JSON.
    let (code, st) = curl("POST", &base, None, br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"plain"}}"#);
    assert_eq!(code, 201, "{st}");
    let big = format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"big"}},"data":{{"a":"{}"}}}}"#, "x".repeat(4 << 20));
    let (code, st) = curl("POST", &base, Some("application/json"), big.as_bytes());
    assert_eq!((code, st["reason"].as_str()), (413, Some("RequestEntityTooLarge")), "{st}");
    let (code, st) = curl("PATCH", &format!("{base}/plain"), Some("application/x-unknown-patch"), b"{}");
    assert_eq!((code, st["reason"].as_str()), (415, Some("UnsupportedMediaType")), "{st}");
    let (code, st) = curl("GET", &format!("{base}?resourceVersion=abc"), None, b"");
    assert_eq!(code, 400, "{st}");
    let (code, st) = curl("GET", &format!("{base}?labelSelector=a%20in%20(b"), None, b"");
    assert_eq!(code, 400, "{st}");
    let (code, st) = curl("GET", &format!("{base}?limit=1&continue=garbage"), None, b"");
    assert_eq!(code, 400, "{st}");
    let (code, st) = curl("PUT", &format!("{base}/plain"), Some("application/json"), br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"plain","resourceVersion":"1"}}"#);
    assert_eq!((code, st["reason"].as_str()), (409, Some("Conflict")), "{st}");
    let (code, _) = curl("GET", &format!("https://{}:6443/api/v1/nosuchthing", c.ip("n2")), None, b"");
    assert_eq!(code, 404);
    // Nothing of the above was stored.
    let names = c.kubectl_ok(&["get", "cm", "-o", "name"]);
    assert!(!names.contains("configmap/x") && !names.contains("configmap/big"), "{names}");
    assert!(names.contains("configmap/plain"));
    // The server still answers.
    assert_eq!(json(&c.kubectl_ok(&["version", "-o", "json"]))["serverVersion"]["minor"], "33");
}

#[test]
fn paginated_lists_are_one_snapshot_and_a_watch_from_their_revision_misses_nothing() {
    let c = up();
    for n in ["b1", "b2", "b3", "b4", "b5"] {
        c.kubectl_ok(&["create", "configmap", n, "--from-literal=v=old"]);
        c.kubectl_ok(&["label", "configmap", n, "set=p"]);
    }
    let base = "/api/v1/namespaces/default/configmaps?labelSelector=set%3Dp";
    let page = |q: &str| json(&c.kubectl_ok(&["get", "--raw", &format!("{base}&{q}")]));
    let first = page("limit=2");
    let rv = first["metadata"]["resourceVersion"].as_str().expect("rv").to_string();
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut collect = |p: &serde_json::Value| {
        for i in p["items"].as_array().expect("items") {
            seen.push((i["metadata"]["name"].as_str().unwrap_or("").to_string(), i["data"]["v"].as_str().unwrap_or("").to_string()));
        }
    };
    collect(&first);
    // Changes after the first page: a new object that sorts first, one changed, one deleted.
    c.kubectl_ok(&["create", "configmap", "a0"]);
    c.kubectl_ok(&["label", "configmap", "a0", "set=p"]);
    c.kubectl_ok(&["patch", "configmap", "b4", "-p", r#"{"data":{"v":"new"}}"#]);
    c.kubectl_ok(&["delete", "configmap", "b5"]);
    let mut cont = first["metadata"]["continue"].as_str().map(str::to_string);
    let mut pages = 1;
    while let Some(token) = cont.take() {
        let p = page(&format!("limit=2&continue={token}"));
        assert_eq!(p["metadata"]["resourceVersion"].as_str(), Some(rv.as_str()), "every page at the first page's revision: {p}");
        collect(&p);
        cont = p["metadata"]["continue"].as_str().filter(|t| !t.is_empty()).map(str::to_string);
        pages += 1;
    }
    assert_eq!(pages, 3);
    let want: Vec<(String, String)> = ["b1", "b2", "b3", "b4", "b5"].iter().map(|n| (n.to_string(), "old".to_string())).collect();
    assert_eq!(seen, want, "the list as of its revision");
    // A watch from the list's revision sees everything after it, once.
    let events = c.kubectl_ok(&["get", "--raw", &format!("{base}&watch=1&resourceVersion={rv}&timeoutSeconds=3")]);
    let got: Vec<(String, String)> = events
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let e = json(l);
            (e["type"].as_str().unwrap_or("").to_string(), e["object"]["metadata"]["name"].as_str().unwrap_or("").to_string())
        })
        .collect();
    let want: Vec<(String, String)> = [("ADDED", "a0"), ("MODIFIED", "b4"), ("DELETED", "b5")].iter().map(|(t, n)| (t.to_string(), n.to_string())).collect();
    assert_eq!(got, want, "{events}");
}

#[test]
fn rbac_refuses_granting_permissions_the_granter_does_not_hold() {
    let c = up();
    c.kubectl_ok(&["create", "namespace", "team"]);
    c.kubectl_ok(&["create", "rolebinding", "alice-admin", "--clusterrole=admin", "--user=alice", "-n", "team"]);
    let kc = c.path().join("alice.kubeconfig");
    let out = std::process::Command::new(common::kuberaft_bin()).args(["kubeconfig", "--pki"]).arg(c.path().join("pki")).args(["--server", &format!("https://{}:6443", c.ip("n1")), "--user", "alice", "--out"]).arg(&kc).output().expect("kubeconfig");
    assert!(out.status.success());
    let as_alice = |args: &[&str]| std::process::Command::new("kubectl").arg("--kubeconfig").arg(&kc).arg("--cache-dir").arg(c.path().join("kcache-alice")).args(args).output().expect("kubectl");
    // She may hand out what she holds in her namespace...
    let out = as_alice(&["create", "rolebinding", "bob-edit", "--clusterrole=edit", "--user=bob", "-n", "team"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // ...but not cluster-admin, nor a role with more than she has.
    let out = as_alice(&["create", "rolebinding", "bob-root", "--clusterrole=cluster-admin", "--user=bob", "-n", "team"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("is attempting to grant RBAC permissions not currently held"), "{err}");
    let out = as_alice(&["create", "role", "nodes-reader", "--verb=get", "--resource=nodes", "-n", "team"]);
    assert!(!out.status.success(), "a role over what she cannot do");
    let out = as_alice(&["create", "role", "pod-reader", "--verb=get", "--resource=pods", "-n", "team"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn evictions_spend_a_disruption_budget_exactly_once() {
    // No controllers: the budget's status is set by hand here, and the disruption controller
    // would recount it (tests/disruption.rs covers the two together).
    let c = Cluster::up(3, common::NO_CONTROLLERS);
    c.wait_api();
    c.kubectl_ok(&["create", "poddisruptionbudget", "pdb", "--selector=app=web", "--min-available=1"]);
    c.kubectl_ok(&["patch", "pdb", "pdb", "--subresource=status", "--type=merge", "-p", r#"{"status":{"disruptionsAllowed":1,"currentHealthy":3,"desiredHealthy":2,"expectedPods":3,"observedGeneration":1}}"#]);
    for i in 0..3 {
        c.kubectl_ok(&["apply", "-f", &c.file(&format!("p{i}.yaml"), &format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: web{i}, labels: {{app: web}}}}\nspec:\n  containers:\n  - {{name: c, image: busybox}}\n"))]);
    }
    let evict = |i: usize| {
        let body = c.file(&format!("ev{i}.json"), &format!(r#"{{"apiVersion":"policy/v1","kind":"Eviction","metadata":{{"name":"web{i}","namespace":"default"}}}}"#));
        let cmd = c.kubectl_cmd(["n1", "n2", "n3"][i], &["create", "--raw", &format!("/api/v1/namespaces/default/pods/web{i}/eviction"), "-f", &body]);
        std::thread::spawn(move || {
            let mut cmd = cmd;
            cmd.output().map(|o| (o.status.success(), String::from_utf8_lossy(&o.stderr).to_string())).unwrap_or((false, String::new()))
        })
    };
    let results: Vec<(bool, String)> = (0..3).map(evict).map(|h| h.join().expect("thread")).collect();
    let ok = results.iter().filter(|r| r.0).count();
    assert_eq!(ok, 1, "{results:?}");
    assert!(results.iter().filter(|r| !r.0).all(|r| r.1.contains("disruption budget")), "{results:?}");
    assert_eq!(c.kubectl_ok(&["get", "pdb", "pdb", "-o", "jsonpath={.status.disruptionsAllowed}"]), "0");
    // A dry-run eviction changes nothing.
    c.kubectl_ok(&["patch", "pdb", "pdb", "--subresource=status", "--type=merge", "-p", r#"{"status":{"disruptionsAllowed":1}}"#]);
    let left = c.kubectl_ok(&["get", "pods", "-o", "name"]);
    let victim = left.lines().next().expect("a pod left").trim_start_matches("pod/").to_string();
    let body = c.file("evd.json", &format!(r#"{{"apiVersion":"policy/v1","kind":"Eviction","metadata":{{"name":"{victim}","namespace":"default"}},"deleteOptions":{{"dryRun":["All"]}}}}"#));
    c.kubectl_ok(&["create", "--raw", &format!("/api/v1/namespaces/default/pods/{victim}/eviction"), "-f", &body]);
    assert!(c.kubectl(&["get", "pod", &victim]).status.success(), "dry-run evicted the pod");
    assert_eq!(c.kubectl_ok(&["get", "pdb", "pdb", "-o", "jsonpath={.status.disruptionsAllowed}"]), "1");
}

#[test]
fn fenced_writes_stop_when_the_lease_changes_hands() {
    let c = up();
    let pki = c.path().join("pki");
    let post = |fence: &str, name: &str| -> u16 {
        let body = c.file("f.json", &format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}"}}}}"#));
        let out = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-H", "Content-Type: application/json", "-H", &format!("X-Kuberaft-Fence: {fence}")])
            .arg("--cacert").arg(pki.join("ca.crt")).arg("--cert").arg(pki.join("client.crt")).arg("--key").arg(pki.join("client.key"))
            .arg("--data-binary").arg(format!("@{body}"))
            .arg(format!("https://{}:6443/api/v1/namespaces/default/configmaps", c.ip("n2")))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
    };
    let lease = |holder: &str, transitions: i32| c.file("l.yaml", &format!("apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {{name: ctl, namespace: kube-system}}\nspec: {{holderIdentity: {holder}, leaseDurationSeconds: 15, leaseTransitions: {transitions}}}\n"));
    c.kubectl_ok(&["apply", "-f", &lease("a", 0)]);
    assert_eq!(post("kube-system/ctl=a@0", "by-a"), 201);
    assert_eq!(post("kube-system/ctl=b@0", "by-b"), 409, "b does not hold the lease");
    c.kubectl_ok(&["apply", "-f", &lease("b", 1)]);
    assert_eq!(post("kube-system/ctl=a@0", "by-a-late"), 409, "a lost the lease");
    assert_eq!(post("kube-system/ctl=b@1", "by-b2"), 201);
    // a takes it back: its first term's writes stay refused, its second term's commit.
    c.kubectl_ok(&["apply", "-f", &lease("a", 2)]);
    assert_eq!(post("kube-system/ctl=a@0", "by-a-first-term"), 409, "a's first term is over");
    assert_eq!(post("kube-system/ctl=a@2", "by-a-second-term"), 201);
    for garbage in ["garbage", "kube-system/ctl=a", "kube-system/ctl=a@x", "kube-system/ctl=@2", "kube-system/ctl=a@-1"] {
        assert_eq!(post(garbage, "x"), 400, "{garbage}");
    }
    c.kubectl_ok(&["delete", "lease", "ctl", "-n", "kube-system"]);
    assert_eq!(post("kube-system/ctl=a@2", "after-delete"), 409, "no lease, no holder");
    let names = c.kubectl_ok(&["get", "cm", "-o", "name"]);
    for (name, kept) in [("by-a", true), ("by-b", false), ("by-a-late", false), ("by-b2", true), ("by-a-first-term", false), ("by-a-second-term", true), ("after-delete", false)] {
        assert_eq!(names.lines().any(|l| l == format!("configmap/{name}")), kept, "{name}: {names}");
    }
}

#[test]
fn priority_classes_set_pod_priority_and_jobs_get_a_generated_selector() {
    let c = up();
    // The system classes exist from the start.
    let pcs = c.kubectl_ok(&["get", "priorityclasses", "-o", "name"]);
    assert!(pcs.contains("priorityclass.scheduling.k8s.io/system-node-critical") && pcs.contains("system-cluster-critical"), "{pcs}");
    c.kubectl_ok(&["create", "priorityclass", "high", "--value=1000", "--preemption-policy=Never"]);
    let err = c.kubectl_err(&["create", "priorityclass", "too-high", "--value=2000000000"]);
    assert!(err.contains("maximum allowed value of a user defined priority is 1000000000"), "{err}");
    c.kubectl_ok(&["create", "priorityclass", "dflt", "--value=7", "--global-default"]);
    let err = c.kubectl_err(&["create", "priorityclass", "dflt2", "--value=8", "--global-default"]);
    assert!(err.contains("PriorityClass dflt is already marked as default. Only one default can exist"), "{err}");

    let pod = |name: &str, extra: &str| format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers: [{{name: c, image: busybox}}]\n{extra}");
    c.kubectl_ok(&["apply", "-f", &c.file("p1.yaml", &pod("p1", "  priorityClassName: high\n"))]);
    let p1 = json(&c.kubectl_ok(&["get", "pod", "p1", "-o", "json"]));
    assert_eq!((p1["spec"]["priority"].as_i64(), p1["spec"]["preemptionPolicy"].as_str()), (Some(1000), Some("Never")));
    c.kubectl_ok(&["apply", "-f", &c.file("p2.yaml", &pod("p2", ""))]);
    let p2 = json(&c.kubectl_ok(&["get", "pod", "p2", "-o", "json"]));
    assert_eq!((p2["spec"]["priority"].as_i64(), p2["spec"]["priorityClassName"].as_str()), (Some(7), Some("dflt")));
    let err = c.kubectl_err(&["apply", "-f", &c.file("p3.yaml", &pod("p3", "  priorityClassName: nope\n"))]);
    assert!(err.contains("pods \"p3\" is forbidden: no PriorityClass with name nope was found"), "{err}");
    let err = c.kubectl_err(&["apply", "-f", &c.file("p4.yaml", &pod("p4", "  priorityClassName: high\n  priority: 5\n"))]);
    assert!(err.contains("the integer value of priority (5) must not be provided in pod spec"), "{err}");

    c.kubectl_ok(&["create", "job", "pi", "--image=busybox", "--", "true"]);
    let job = json(&c.kubectl_ok(&["get", "job", "pi", "-o", "json"]));
    let uid = job["metadata"]["uid"].as_str().expect("uid");
    assert_eq!(job["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"], uid);
    assert_eq!(job["spec"]["template"]["metadata"]["labels"]["job-name"], "pi");
}

#[test]
fn pods_made_by_kubectl_can_be_labelled_and_patched_afterwards() {
    let c = up();
    // The ServiceAccount controller makes `default`; admission then mounts its token.
    let t = std::time::Instant::now();
    while !c.kubectl(&["get", "serviceaccount", "default"]).status.success() {
        assert!(t.elapsed() < std::time::Duration::from_secs(30), "no default ServiceAccount");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    c.kubectl_ok(&["run", "lbl", "--image=busybox"]);
    let pod = json(&c.kubectl_ok(&["get", "pod", "lbl", "-o", "json"]));
    assert!(pod["spec"]["volumes"][0]["name"].as_str().unwrap_or("").starts_with("kube-api-access-"), "{}", pod["spec"]);
    assert!(pod["spec"].get("initContainers").is_none(), "{}", pod["spec"]);
    c.kubectl_ok(&["label", "pod", "lbl", "tier=web"]);
    c.kubectl_ok(&["annotate", "pod", "lbl", "note=x"]);
    c.kubectl_ok(&["patch", "pod", "lbl", "--type=json", "-p", r#"[{"op":"add","path":"/metadata/labels/extra","value":"y"}]"#]);
    let labels = json(&c.kubectl_ok(&["get", "pod", "lbl", "-o", "json"]))["metadata"]["labels"].clone();
    assert_eq!((labels["tier"].as_str(), labels["extra"].as_str()), (Some("web"), Some("y")));
    let err = c.kubectl_err(&["patch", "pod", "lbl", "--type=merge", "-p", r#"{"spec":{"containers":[{"name":"lbl","image":"busybox","command":["sh"]}]}}"#]);
    assert!(err.contains("pod updates may not change fields other than"), "{err}");
}
