//! The controllers crate end to end: a controller manager (in this process, elected through a
//! Lease) against a three-replica cluster, driven with kubectl. No node runs pods here, so a
//! helper thread marks pods Running and Ready, as a kubelet would.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Cluster;

fn start_controller_manager(c: &Cluster) {
    let kubeconfig = c.path().join("n1").join("kubeconfig");
    let ca = std::fs::read_to_string(c.path().join("pki").join("ca.crt")).expect("ca.crt");
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "controllers=info".into())).with_test_writer().try_init();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        rt.block_on(async move {
            let kc = kube::config::Kubeconfig::read_from(&kubeconfig).expect("kubeconfig");
            let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.expect("config");
            let mut opts = controllers::ControllerManagerOptions::new("test-cm");
            let mut election = controllers::ElectionConfig::new(&opts.lease_namespace, &opts.lease_name, "test-cm");
            election.lease_duration = Duration::from_secs(4);
            election.renew_deadline = Duration::from_secs(3);
            election.retry_period = Duration::from_millis(500);
            opts.election = Some(election);
            opts.root_ca_pem = Some(ca);
            if let Err(e) = controllers::run_controller_manager(config, opts).await {
                eprintln!("controller manager stopped: {e:#}");
            }
        });
    });
}

/// Marks every pod in `ns` Running and Ready until dropped, standing in for kubelets.
struct FakeKubelet(Arc<AtomicBool>);

impl FakeKubelet {
    fn start(c: &Cluster, ns: &str) -> FakeKubelet {
        let stop = Arc::new(AtomicBool::new(false));
        let (kubeconfig, cache, ns, flag) = (c.path().join("n1").join("kubeconfig"), c.path().join("kcache").join("kubelet"), ns.to_string(), stop.clone());
        std::thread::spawn(move || {
            let kubectl = |args: &[&str]| std::process::Command::new("kubectl").arg("--kubeconfig").arg(&kubeconfig).arg("--cache-dir").arg(&cache).args(args).output();
            while !flag.load(Ordering::Relaxed) {
                let tmpl = r#"{range .items[*]}{.metadata.name} {.status.phase}{"\n"}{end}"#;
                if let Ok(out) = kubectl(&["get", "pods", "-n", &ns, "-o", &format!("jsonpath={tmpl}")]) {
                    for line in String::from_utf8_lossy(&out.stdout).lines() {
                        let mut w = line.split_whitespace();
                        if let (Some(name), phase) = (w.next(), w.next()) {
                            if phase == Some("Running") {
                                continue;
                            }
                            let _ = kubectl(&["patch", "pod", name, "-n", &ns, "--subresource=status", "--type=merge", "-p", r#"{"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True"}]}}"#]);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        FakeKubelet(stop)
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn get(c: &Cluster, args: &[&str]) -> String {
    String::from_utf8_lossy(&c.kubectl(args).stdout).trim().to_string()
}

fn words(s: String) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

#[test]
fn deployments_roll_out_undo_scale_and_are_collected_and_namespaces_are_emptied() {
    let c = Cluster::up(3, common::NO_CONTROLLERS);
    c.wait_api();
    start_controller_manager(&c);

    // ServiceAccount controller: a new namespace gets `default` and the root CA ConfigMap.
    c.kubectl_ok(&["create", "namespace", "team"]);
    wait_for("default service account", Duration::from_secs(30), || c.kubectl(&["get", "sa", "default", "-n", "team"]).status.success());
    let ca = get(&c, &["get", "cm", "kube-root-ca.crt", "-n", "team", "-o", "jsonpath={.data.ca\\.crt}"]);
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");

    // Deployment → ReplicaSet `web-<hash>` → 3 pods owned by it.
    c.kubectl_ok(&["create", "deployment", "web", "--image=nginx", "--replicas=3"]);
    wait_for("one replica set with 3 pods", Duration::from_secs(30), || {
        let rs = words(get(&c, &["get", "rs", "-l", "app=web", "-o", "jsonpath={.items[*].metadata.name}"]));
        let owners = words(get(&c, &["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].metadata.ownerReferences[0].name}"]));
        rs.len() == 1 && owners.len() == 3 && owners.iter().all(|o| *o == rs[0])
    });
    let rs1 = get(&c, &["get", "rs", "-l", "app=web", "-o", "jsonpath={.items[0].metadata.name}"]);
    assert!(rs1.starts_with("web-"), "{rs1}");
    let hash = get(&c, &["get", "rs", &rs1, "-o", "jsonpath={.metadata.labels.pod-template-hash}"]);
    assert_eq!(rs1, format!("web-{hash}"));

    let _kubelet = FakeKubelet::start(&c, "default");
    c.kubectl_ok(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    assert_eq!(get(&c, &["get", "deploy", "web", "-o", "jsonpath={.status.availableReplicas}"]), "3");
    let events = c.kubectl_ok(&["get", "events", "-o", "jsonpath={.items[*].message}"]);
    assert!(events.contains(&format!("Scaled up replica set {rs1} to 3 from 0")), "{events}");
    assert!(events.contains("Created pod: web-"), "{events}");

    // A new template: a second ReplicaSet takes over; revision 2.
    c.kubectl_ok(&["set", "image", "deploy/web", "nginx=nginx:1.27"]);
    c.kubectl_ok(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    let rss = words(get(&c, &["get", "rs", "-l", "app=web", "-o", "jsonpath={.items[*].metadata.name}"]));
    assert_eq!(rss.len(), 2, "{rss:?}");
    assert_eq!(get(&c, &["get", "rs", &rs1, "-o", "jsonpath={.spec.replicas}"]), "0");
    assert_eq!(get(&c, &["get", "deploy", "web", "-o", "jsonpath={.metadata.annotations.deployment\\.kubernetes\\.io/revision}"]), "2");
    let history = c.kubectl_ok(&["rollout", "history", "deploy/web"]);
    assert!(history.contains('1') && history.contains('2'), "{history}");

    // Undo reuses the first ReplicaSet, which becomes revision 3.
    c.kubectl_ok(&["rollout", "undo", "deploy/web"]);
    c.kubectl_ok(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    assert_eq!(get(&c, &["get", "rs", &rs1, "-o", "jsonpath={.spec.replicas}"]), "3");
    assert_eq!(get(&c, &["get", "rs", &rs1, "-o", "jsonpath={.metadata.annotations.deployment\\.kubernetes\\.io/revision}"]), "3");
    assert_eq!(words(get(&c, &["get", "rs", "-l", "app=web", "-o", "name"])).len(), 2);
    assert_eq!(get(&c, &["get", "deploy", "web", "-o", "jsonpath={.spec.template.spec.containers[0].image}"]), "nginx");

    // Scaling.
    c.kubectl_ok(&["scale", "deploy/web", "--replicas=5"]);
    c.kubectl_ok(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    wait_for("5 pods", Duration::from_secs(30), || words(get(&c, &["get", "pods", "-l", "app=web", "-o", "name"])).len() == 5);
    c.kubectl_ok(&["scale", "deploy/web", "--replicas=2"]);
    wait_for("2 pods", Duration::from_secs(30), || words(get(&c, &["get", "pods", "-l", "app=web", "-o", "name"])).len() == 2);

    // Background deletion: the garbage collector removes the ReplicaSets, then their pods.
    c.kubectl_ok(&["delete", "deploy", "web"]);
    wait_for("replica sets and pods of web to be collected", Duration::from_secs(30), || {
        get(&c, &["get", "rs,pods", "-l", "app=web", "-o", "name"]).is_empty()
    });

    // Foreground deletion of a ReplicaSet: pods go first, then the ReplicaSet.
    c.kubectl_ok(&["create", "deployment", "fg", "--image=nginx", "--replicas=2"]);
    wait_for("fg pods", Duration::from_secs(30), || words(get(&c, &["get", "pods", "-l", "app=fg", "-o", "name"])).len() == 2);
    c.kubectl_ok(&["delete", "deploy", "fg", "--cascade=foreground", "--timeout=60s"]);
    wait_for("fg collected", Duration::from_secs(30), || get(&c, &["get", "deploy,rs,pods", "-l", "app=fg", "-o", "name"]).is_empty());

    // Orphan deletion: the ReplicaSet stays, without its owner reference.
    c.kubectl_ok(&["create", "deployment", "orph", "--image=nginx", "--replicas=1"]);
    wait_for("orph rs", Duration::from_secs(30), || !get(&c, &["get", "rs", "-l", "app=orph", "-o", "name"]).is_empty());
    c.kubectl_ok(&["delete", "deploy", "orph", "--cascade=orphan", "--timeout=60s"]);
    wait_for("orph deployment gone", Duration::from_secs(30), || get(&c, &["get", "deploy", "orph", "-o", "name"]).is_empty());
    wait_for("orph rs released", Duration::from_secs(30), || get(&c, &["get", "rs", "-l", "app=orph", "-o", "jsonpath={.items[*].metadata.ownerReferences}"]).is_empty());
    assert_eq!(words(get(&c, &["get", "rs", "-l", "app=orph", "-o", "name"])).len(), 1);

    // Namespace deletion empties the namespace, then it disappears.
    c.kubectl_ok(&["create", "deployment", "api", "-n", "team", "--image=nginx", "--replicas=2"]);
    c.kubectl_ok(&["create", "configmap", "settings", "-n", "team", "--from-literal=a=1"]);
    wait_for("api pods", Duration::from_secs(30), || words(get(&c, &["get", "pods", "-n", "team", "-o", "name"])).len() == 2);
    c.kubectl_ok(&["delete", "namespace", "team", "--wait=false"]);
    wait_for("namespace team to disappear", Duration::from_secs(60), || !c.kubectl(&["get", "namespace", "team"]).status.success());
}


#[test]
fn endpoints_follow_pod_readiness() {
    let c = Cluster::up(3, common::NO_CONTROLLERS);
    c.wait_api();
    start_controller_manager(&c);

    let svc = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"ep","labels":{"tier":"front"}},
        "spec":{"selector":{"app":"ep"},"ports":[{"name":"http","port":80,"targetPort":"web"}]}}"#;
    let pod = |name: &str| {
        format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","labels":{{"app":"ep"}}}},
            "spec":{{"containers":[{{"name":"c","image":"nginx","ports":[{{"name":"web","containerPort":8080}}]}}]}}}}"#
        )
    };
    let dir = c.path().join("ep-manifests");
    std::fs::create_dir_all(&dir).unwrap();
    for (f, body) in [("svc.json", svc.to_string()), ("a.json", pod("ep-a")), ("b.json", pod("ep-b"))] {
        std::fs::write(dir.join(f), body).unwrap();
        c.kubectl_ok(&["apply", "-f", dir.join(f).to_str().unwrap()]);
    }
    let status = |ip: &str, ready: &str| format!(r#"{{"status":{{"podIP":"{ip}","conditions":[{{"type":"Ready","status":"{ready}"}}]}}}}"#);
    c.kubectl_ok(&["patch", "pod", "ep-a", "--subresource=status", "--type=merge", "-p", &status("10.244.0.5", "True")]);
    c.kubectl_ok(&["patch", "pod", "ep-b", "--subresource=status", "--type=merge", "-p", &status("10.244.0.6", "False")]);

    let ep = |path: &str| get(&c, &["get", "endpoints", "ep", "-o", &format!("jsonpath={path}")]);
    wait_for("endpoints split by readiness", Duration::from_secs(30), || {
        ep("{.subsets[*].addresses[*].ip}") == "10.244.0.5" && ep("{.subsets[*].notReadyAddresses[*].ip}") == "10.244.0.6"
    });
    assert_eq!(ep("{.subsets[0].addresses[0].targetRef.kind}/{.subsets[0].addresses[0].targetRef.name}"), "Pod/ep-a");
    assert_eq!(ep("{.subsets[0].ports[0].name}:{.subsets[0].ports[0].port}:{.subsets[0].ports[0].protocol}"), "http:8080:TCP");
    assert_eq!(ep("{.metadata.labels.tier}"), "front");

    let slices = |path: &str| get(&c, &["get", "endpointslices", "-l", "kubernetes.io/service-name=ep", "-o", &format!("jsonpath={path}")]);
    wait_for("endpoint slice with both pods", Duration::from_secs(30), || {
        slices("{range .items[*].endpoints[*]}{.addresses[0]}={.conditions.ready} {end}") == "10.244.0.5=true 10.244.0.6=false"
    });
    let names = words(slices("{.items[*].metadata.name}"));
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].starts_with("ep-") && names[0].len() == "ep-".len() + 5, "{names:?}");
    assert_eq!(slices("{.items[0].addressType}"), "IPv4");
    assert_eq!(slices("{.items[0].metadata.labels.endpointslice\\.kubernetes\\.io/managed-by}"), "endpointslice-controller.k8s.io");
    assert_eq!(slices("{.items[0].ports[0].name}:{.items[0].ports[0].port}"), "http:8080");
    assert_eq!(slices("{.items[0].endpoints[0].targetRef.name}"), "ep-a");

    // The second pod turns Ready: it moves to addresses, in the same slice.
    c.kubectl_ok(&["patch", "pod", "ep-b", "--subresource=status", "--type=merge", "-p", &status("10.244.0.6", "True")]);
    wait_for("both pods ready in endpoints", Duration::from_secs(30), || {
        ep("{.subsets[*].addresses[*].ip}") == "10.244.0.5 10.244.0.6" && ep("{.subsets[*].notReadyAddresses[*].ip}").is_empty()
    });
    wait_for("both pods ready in the slice", Duration::from_secs(30), || {
        slices("{range .items[*].endpoints[*]}{.addresses[0]}={.conditions.ready} {end}") == "10.244.0.5=true 10.244.0.6=true"
    });
    assert_eq!(words(slices("{.items[*].metadata.name}")), names);

    // Deleting the Service removes its Endpoints and slices.
    c.kubectl_ok(&["delete", "service", "ep"]);
    wait_for("endpoints and slices gone", Duration::from_secs(30), || {
        !c.kubectl(&["get", "endpoints", "ep"]).status.success() && slices("{.items[*].metadata.name}").is_empty()
    });
}

#[test]
fn the_garbage_collector_follows_crds_created_after_it_started() {
    let c = Cluster::up(3, common::NO_CONTROLLERS);
    c.wait_api();
    start_controller_manager(&c);
    wait_for("a controller-manager leader", Duration::from_secs(30), || !get(&c, &["get", "lease", "-n", "kube-system", "kuberaft-controller-manager", "-o", "jsonpath={.spec.holderIdentity}"]).is_empty());
    std::thread::sleep(Duration::from_secs(2));
    let crd = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: widgets.example.com}\nspec:\n  group: example.com\n  scope: Namespaced\n  names: {plural: widgets, singular: widget, kind: Widget}\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}\n";
    c.kubectl_ok(&["apply", "-f", &c.file("crd.yaml", crd)]);
    c.kubectl_ok(&["wait", "--for=condition=Established", "crd/widgets.example.com", "--timeout=30s"]);
    // A Widget owning a ConfigMap, and a Widget owned by a ConfigMap.
    c.kubectl_ok(&["apply", "-f", &c.file("w.yaml", "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: owner}\n")]);
    let owner_uid = get(&c, &["get", "widget", "owner", "-o", "jsonpath={.metadata.uid}"]);
    c.kubectl_ok(&["create", "configmap", "holder"]);
    let holder_uid = get(&c, &["get", "configmap", "holder", "-o", "jsonpath={.metadata.uid}"]);
    let dependent_cm = format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: owned\n  ownerReferences: [{{apiVersion: example.com/v1, kind: Widget, name: owner, uid: \"{owner_uid}\"}}]\n");
    c.kubectl_ok(&["apply", "-f", &c.file("owned.yaml", &dependent_cm)]);
    let dependent_w = format!("apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: child\n  ownerReferences: [{{apiVersion: v1, kind: ConfigMap, name: holder, uid: \"{holder_uid}\"}}]\n");
    c.kubectl_ok(&["apply", "-f", &c.file("child.yaml", &dependent_w)]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(get(&c, &["get", "widget", "child", "-o", "name"]), "widget.example.com/child", "a dependent with a live owner stays");

    c.kubectl_ok(&["delete", "widget", "owner"]);
    wait_for("the Widget's ConfigMap to be collected", Duration::from_secs(30), || !c.kubectl(&["get", "configmap", "owned"]).status.success());
    c.kubectl_ok(&["delete", "configmap", "holder"]);
    wait_for("the ConfigMap's Widget to be collected", Duration::from_secs(30), || !c.kubectl(&["get", "widget", "child"]).status.success());
}
