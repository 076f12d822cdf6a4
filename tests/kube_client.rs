//! The `kube` crate (kube-rs) as a client of three replicas: typed CRUD, merge and server-side
//! apply patches, the scale subresource, metadata-only requests, and kube-runtime's watcher.

mod common;

use std::time::Duration;

use common::Cluster;
use futures::TryStreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;

async fn client(c: &Cluster, replica: &str) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(c.path().join(replica).join("kubeconfig")).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await.expect("config");
    kube::Client::try_from(cfg).expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_crud_patch_apply_scale_and_watcher_work() {
    let c = Cluster::up(3, &[]);
    c.wait_api();
    let cl = client(&c, "n2").await;
    let info = cl.apiserver_version().await.expect("version");
    assert_eq!(info.minor, "33");

    let cms: Api<ConfigMap> = Api::namespaced(cl.clone(), "default");
    // kube-runtime's watcher: list (limit=500) then watch with bookmarks, as controllers do.
    let events = tokio::spawn({
        let cms = cms.clone();
        async move {
            let mut seen = Vec::new();
            let stream = watcher(cms, watcher::Config::default().labels("from=kube-rs"));
            let mut stream = std::pin::pin!(stream);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, stream.try_next()).await.unwrap_or(Ok(None)) {
                match ev {
                    watcher::Event::Apply(cm) => seen.push(format!("apply:{}", cm.metadata.name.unwrap_or_default())),
                    watcher::Event::Delete(cm) => {
                        seen.push(format!("delete:{}", cm.metadata.name.unwrap_or_default()));
                        break;
                    }
                    _ => {}
                }
            }
            seen
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "rs", "labels": {"from": "kube-rs"}}, "data": {"a": "1"}
    }))
    .expect("cm");
    let created = cms.create(&PostParams::default(), &cm).await.expect("create");
    assert!(created.metadata.uid.is_some());
    cms.patch("rs", &PatchParams::default(), &Patch::Merge(serde_json::json!({"data": {"b": "2"}}))).await.expect("merge patch");
    let applied = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "rs", "labels": {"from": "kube-rs"}}, "data": {"c": "3"}});
    cms.patch("rs", &PatchParams::apply("kube-rs-test"), &Patch::Apply(applied)).await.expect("apply");
    let got = cms.get("rs").await.expect("get");
    let data = got.data.unwrap_or_default();
    assert_eq!(data.get("c").map(String::as_str), Some("3"));
    let managers: Vec<String> = got.metadata.managed_fields.unwrap_or_default().into_iter().filter_map(|m| m.manager).collect();
    assert!(managers.iter().any(|m| m == "kube-rs-test"), "{managers:?}");
    let list = cms.list(&ListParams::default().labels("from=kube-rs")).await.expect("list");
    assert_eq!(list.items.len(), 1);
    assert!(list.metadata.resource_version.is_some());
    cms.delete("rs", &DeleteParams::default()).await.expect("delete");
    let seen = events.await.expect("watcher task");
    assert!(seen.first().map(|s| s == "apply:rs").unwrap_or(false), "{seen:?}");
    assert_eq!(seen.last().map(String::as_str), Some("delete:rs"), "{seen:?}");

    let deps: Api<Deployment> = Api::namespaced(cl.clone(), "default");
    let d: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "rs-web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "rs-web"}},
                 "template": {"metadata": {"labels": {"app": "rs-web"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}
    }))
    .expect("deployment");
    deps.create(&PostParams::default(), &d).await.expect("create deployment");
    let scale = deps.patch_scale("rs-web", &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"replicas": 3}}))).await.expect("scale");
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(3));
    assert_eq!(deps.get("rs-web").await.expect("get").spec.and_then(|s| s.replicas), Some(3));

    // Metadata only (PartialObjectMetadata), as metadata informers and garbage collectors read.
    let metas: Api<PartialObjectMeta<ConfigMap>> = Api::namespaced(cl.clone(), "default");
    let meta_events = tokio::spawn({
        let metas = metas.clone();
        async move {
            let mut seen = Vec::new();
            let mut stream = std::pin::pin!(watcher(metas, watcher::Config::default().labels("meta=only")));
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, stream.try_next()).await.unwrap_or(Ok(None)) {
                if let watcher::Event::Apply(m) = ev {
                    let kind = m.types.map(|t| t.kind).unwrap_or_default();
                    seen.push(format!("{kind}:{}:{}", m.metadata.name.unwrap_or_default(), m.metadata.labels.unwrap_or_default().get("v").cloned().unwrap_or_default()));
                    if seen.len() == 2 {
                        break;
                    }
                }
            }
            seen
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({"metadata": {"name": "meta", "labels": {"meta": "only", "v": "1"}}, "data": {"big": "x".repeat(4096)}})).expect("cm");
    cms.create(&PostParams::default(), &cm).await.expect("create");
    cms.patch("meta", &PatchParams::default(), &Patch::Merge(serde_json::json!({"metadata": {"labels": {"v": "2"}}}))).await.expect("label");
    let m = cms.get_metadata("meta").await.expect("get metadata");
    assert_eq!(m.types.as_ref().map(|t| (t.kind.as_str(), t.api_version.as_str())), Some(("PartialObjectMetadata", "meta.k8s.io/v1")));
    assert!(m.metadata.uid.is_some() && m.metadata.resource_version.is_some());
    let list = cms.list_metadata(&ListParams::default().labels("meta=only")).await.expect("list metadata");
    assert_eq!(list.items.iter().map(|i| i.metadata.name.clone().unwrap_or_default()).collect::<Vec<_>>(), vec!["meta".to_string()]);
    assert_eq!(list.items[0].metadata.resource_version, m.metadata.resource_version);
    assert_eq!(meta_events.await.expect("metadata watcher"), vec!["PartialObjectMetadata:meta:1".to_string(), "PartialObjectMetadata:meta:2".to_string()]);
    // The same request by hand: no data, only metadata.
    let req = http::Request::get("/api/v1/namespaces/default/configmaps/meta").header("accept", "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1").body(Vec::new()).expect("request");
    let raw: serde_json::Value = cl.request(req).await.expect("raw get");
    assert!(raw.get("data").is_none(), "{raw}");
    assert_eq!(raw["metadata"]["labels"]["v"], "2");

    let missing = cms.get("nope").await.expect_err("missing");
    match missing {
        kube::Error::Api(s) => assert_eq!(s.code, 404),
        other => panic!("unexpected error {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_exec_reaches_the_node_through_the_apiserver() {
    let c = Cluster::up(3, &[]);
    c.wait_api();
    let _node = c.fake_node("n6", "fake-rs");
    c.kubectl_ok(&["apply", "-f", &c.file("pod.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: rs-pod}\nspec:\n  nodeName: fake-rs\n  containers:\n  - {name: app, image: busybox}\n")]);
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client(&c, "n3").await, "default");
    let mut attached = pods
        .exec("rs-pod", ["echo", "from", "rust"], &kube::api::AttachParams::default().stderr(false))
        .await
        .expect("exec");
    let mut out = String::new();
    use tokio::io::AsyncReadExt;
    attached.stdout().expect("stdout").read_to_string(&mut out).await.expect("read");
    let status = attached.take_status().expect("status").await;
    assert_eq!(out, "ran echo from rust in app for kuberaft\n");
    assert_eq!(status.and_then(|s| s.status).as_deref(), Some("Success"));
}
