//! Gives every active namespace a `default` ServiceAccount and the `kube-root-ca.crt`
//! ConfigMap (the cluster CA, for in-cluster clients), recreating them if deleted.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;

const ROOT_CA: &str = "kube-root-ca.crt";

struct Ctx {
    client: Client,
    root_ca: Arc<Option<String>>,
}

pub async fn run(client: Client, root_ca: Arc<Option<String>>) -> anyhow::Result<()> {
    let to_ns = |meta_ns: Option<String>| meta_ns.map(|ns| ObjectRef::<Namespace>::new(&ns));
    let ctl = Controller::new(Api::<Namespace>::all(client.clone()), watcher::Config::default())
        .watches(Api::<ServiceAccount>::all(client.clone()), watcher::Config::default().fields("metadata.name=default"), move |sa| to_ns(sa.namespace()))
        .watches(Api::<ConfigMap>::all(client.clone()), watcher::Config::default().fields(&format!("metadata.name={ROOT_CA}")), move |cm| to_ns(cm.namespace()));
    crate::util::drain("serviceaccount", ctl.run(reconcile, crate::util::error_policy, Arc::new(Ctx { client, root_ca }))).await;
    Ok(())
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, crate::Error> {
    Ok(sync(&ns, &ctx).await?)
}

async fn sync(ns: &Namespace, ctx: &Ctx) -> anyhow::Result<Action> {
    let terminating = ns.metadata.deletion_timestamp.is_some() || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
    if terminating {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let sas = Api::<ServiceAccount>::namespaced(ctx.client.clone(), &name);
    if sas.get_opt("default").await.with_context(|| format!("get serviceaccount {name}/default"))?.is_none() {
        let sa = ServiceAccount { metadata: ObjectMeta { name: Some("default".into()), ..Default::default() }, ..Default::default() };
        match sas.create(&PostParams::default(), &sa).await {
            Ok(_) => tracing::info!(namespace = %name, "created default service account"),
            Err(e) if crate::util::is_status(&e, 409) => {}
            Err(e) => return Err(e).with_context(|| format!("create serviceaccount {name}/default")),
        }
    }
    if let Some(pem) = ctx.root_ca.as_ref() {
        let cms = Api::<ConfigMap>::namespaced(ctx.client.clone(), &name);
        match cms.get_opt(ROOT_CA).await.with_context(|| format!("get configmap {name}/{ROOT_CA}"))? {
            None => {
                let cm = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(ROOT_CA.into()),
                        annotations: Some(BTreeMap::from([("kubernetes.io/description".to_string(), "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.".to_string())])),
                        ..Default::default()
                    },
                    data: Some(BTreeMap::from([("ca.crt".to_string(), pem.clone())])),
                    ..Default::default()
                };
                match cms.create(&PostParams::default(), &cm).await {
                    Ok(_) => tracing::info!(namespace = %name, "created {ROOT_CA}"),
                    Err(e) if crate::util::is_status(&e, 409) => {}
                    Err(e) => return Err(e).with_context(|| format!("create configmap {name}/{ROOT_CA}")),
                }
            }
            Some(cm) if cm.data.as_ref().and_then(|d| d.get("ca.crt")) != Some(pem) => {
                cms.patch(ROOT_CA, &PatchParams::default(), &Patch::Merge(json!({"data": {"ca.crt": pem}}))).await.with_context(|| format!("update configmap {name}/{ROOT_CA}"))?;
            }
            Some(_) => {}
        }
    }
    Ok(Action::await_change())
}
