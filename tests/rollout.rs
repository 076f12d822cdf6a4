//! A Deployment's rolling update on three replicas with hollow nodes, sampled from a watch:
//! at every observed state the pods stay within maxSurge above and maxUnavailable below the
//! desired count; pause holds a template change back until resume.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, Cluster};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};

fn ready(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// What the watches saw: the extremes over every state.
#[derive(Debug, Default)]
struct Extremes {
    max_pods: usize,
    min_ready: usize,
    max_rs_replicas: i32,
    states: usize,
}

#[test]
fn rolling_update_stays_within_surge_and_unavailability_and_pause_holds_it() {
    let c = Cluster::up(3, &[]);
    c.wait_api();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let kubeconfig = c.path().join("n1").join("kubeconfig");
    let config = rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(&kubeconfig).expect("kubeconfig");
        kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.expect("config")
    });
    let args = node::NodeArgs::from_flags(["--hollow", "--kubeconfig", kubeconfig.to_str().expect("path"), "--name", "ru", "--hollow-count", "3", "--heartbeat-seconds", "2"]).expect("flags");
    rt.spawn(node::run_hollow(config.clone(), args));
    eventually("3 nodes", Duration::from_secs(30), || {
        let n = c.kubectl_ok(&["get", "nodes", "--no-headers"]);
        if n.lines().filter(|l| l.contains(" Ready ")).count() == 3 { Ok(()) } else { Err(n) }
    });

    let deploy = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 6\n  selector: {matchLabels: {app: web}}\n  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 2, maxUnavailable: 1}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: c, image: 'nginx:1'}]\n";
    c.kubectl_ok(&["apply", "-f", &c.file("web.yaml", deploy)]);
    c.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);

    // Watch pods and ReplicaSets; after every event, measure.
    let seen = Arc::new(Mutex::new(Extremes { min_ready: usize::MAX, ..Default::default() }));
    let client = rt.block_on(async { kube::Client::try_from(config).expect("client") });
    let (pods_api, rs_api) = (Api::<Pod>::namespaced(client.clone(), "default"), Api::<ReplicaSet>::namespaced(client, "default"));
    let s = seen.clone();
    let pods_task = rt.spawn(async move {
        let mut pods: BTreeMap<String, Pod> = BTreeMap::new();
        let mut initial: BTreeMap<String, Pod> = BTreeMap::new();
        let mut live = false;
        let mut stream = watcher(pods_api, watcher::Config::default().labels("app=web")).boxed();
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Init) => initial.clear(),
                Ok(watcher::Event::InitApply(p)) => {
                    initial.insert(p.name_any(), p);
                }
                Ok(watcher::Event::InitDone) => {
                    pods = std::mem::take(&mut initial);
                    live = true;
                }
                Ok(watcher::Event::Apply(p)) => {
                    pods.insert(p.name_any(), p);
                }
                Ok(watcher::Event::Delete(p)) => {
                    pods.remove(&p.name_any());
                }
                Err(_) => continue,
            }
            if !live {
                continue;
            }
            // Pods being deleted no longer count, as for the Deployment controller.
            let active: Vec<&Pod> = pods.values().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
            let mut e = s.lock().unwrap();
            e.max_pods = e.max_pods.max(active.len());
            e.min_ready = e.min_ready.min(active.iter().filter(|p| ready(p)).count());
            e.states += 1;
        }
    });
    let s = seen.clone();
    let rs_task = rt.spawn(async move {
        let mut rss: BTreeMap<String, i32> = BTreeMap::new();
        let mut stream = watcher(rs_api, watcher::Config::default()).boxed();
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Apply(rs)) | Ok(watcher::Event::InitApply(rs)) => {
                    rss.insert(rs.name_any(), rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1));
                }
                Ok(watcher::Event::Delete(rs)) => {
                    rss.remove(&rs.name_any());
                }
                _ => continue,
            }
            let mut e = s.lock().unwrap();
            e.max_rs_replicas = e.max_rs_replicas.max(rss.values().sum());
        }
    });
    eventually("watch primed", Duration::from_secs(10), || {
        let e = seen.lock().unwrap();
        if e.states > 0 && e.max_rs_replicas == 6 { Ok(()) } else { Err(format!("{e:?}")) }
    });

    // Paused: a template change makes no new ReplicaSet.
    c.kubectl_ok(&["rollout", "pause", "deployment/web"]);
    c.kubectl_ok(&["set", "image", "deployment/web", "c=nginx:2"]);
    std::thread::sleep(Duration::from_secs(2));
    let rs_count = c.kubectl_ok(&["get", "rs", "-l", "app=web", "--no-headers"]).lines().count();
    assert_eq!(rs_count, 1, "paused deployment rolled");
    let cond = c.kubectl_ok(&["get", "deployment", "web", "-o", "jsonpath={.status.conditions[?(@.type==\"Progressing\")].reason}"]);
    assert_eq!(cond, "DeploymentPaused");

    c.kubectl_ok(&["rollout", "resume", "deployment/web"]);
    c.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    // One more rollout, straight away.
    c.kubectl_ok(&["set", "image", "deployment/web", "c=nginx:3"]);
    c.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    std::thread::sleep(Duration::from_millis(500));
    pods_task.abort();
    rs_task.abort();

    let e = seen.lock().unwrap();
    // The Deployment controller bounds the ReplicaSets' replicas exactly (as upstream, it counts
    // spec.replicas); a pod of a ReplicaSet just scaled down lives on until that ReplicaSet's
    // controller deletes it, so pods may briefly exceed the bound by the one being removed.
    assert!(e.max_rs_replicas <= 8, "ReplicaSets scaled beyond replicas + maxSurge: {e:?}");
    assert!(e.max_pods <= 9, "pods beyond replicas + maxSurge (+1 being removed): {e:?}");
    assert!(e.min_ready >= 5, "fewer than replicas - maxUnavailable ready pods: {e:?}");
    assert!(e.max_pods > 6, "the rollout never surged, so the sampling saw nothing: {e:?}");
    let images = c.kubectl_ok(&["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].spec.containers[0].image}"]);
    assert_eq!(images.split_whitespace().filter(|i| *i == "nginx:3").count(), 6, "{images}");
    let history = c.kubectl_ok(&["rollout", "history", "deployment/web"]);
    assert!(history.lines().filter(|l| l.trim_start().starts_with(char::is_numeric)).count() == 3, "{history}");
}
