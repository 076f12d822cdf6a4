//! Namespace controller: empties a namespace that is being deleted, then removes the
//! `kubernetes` finalizer through the finalize subresource so the API server deletes it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::discovery::{verbs, Discovery, Scope};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

const FINALIZER: &str = "kubernetes";

struct Ctx {
    client: Client,
}

pub async fn run(client: Client) -> anyhow::Result<()> {
    let ctl = Controller::new(Api::<Namespace>::all(client.clone()), watcher::Config::default());
    crate::util::drain("namespace", ctl.run(reconcile, crate::util::error_policy, Arc::new(Ctx { client }))).await;
    Ok(())
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, crate::Error> {
    Ok(sync(&ns, &ctx.client).await?)
}

async fn sync(ns: &Namespace, client: &Client) -> anyhow::Result<Action> {
    if ns.metadata.deletion_timestamp.is_none() {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    if !ns.spec.as_ref().and_then(|s| s.finalizers.as_ref()).map(|f| f.iter().any(|x| x == FINALIZER)).unwrap_or(false) {
        return Ok(Action::await_change());
    }
    let remaining = delete_contents(client, &name).await?;
    if remaining > 0 {
        // Pods on nodes terminate gracefully and objects may carry finalizers: look again soon.
        tracing::debug!(namespace = %name, remaining, "namespace not empty yet");
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    let api = Api::<Namespace>::all(client.clone());
    let mut cur = api.get(&name).await.with_context(|| format!("get namespace {name}"))?;
    if let Some(f) = cur.spec.as_mut().and_then(|s| s.finalizers.as_mut()) {
        f.retain(|x| x != FINALIZER);
    }
    match api.replace_subresource("finalize", &name, &PostParams::default(), &cur).await {
        Ok(_) => tracing::info!(namespace = %name, "namespace emptied and finalized"),
        Err(e) if crate::util::is_not_found(&e) => {}
        Err(e) => return Err(e).with_context(|| format!("finalize namespace {name}")),
    }
    Ok(Action::await_change())
}

/// Deletes every namespaced object in `ns` that discovery lists; returns how many remain.
async fn delete_contents(client: &Client, ns: &str) -> anyhow::Result<usize> {
    let discovery = Discovery::new(client.clone()).run().await.context("API discovery")?;
    let mut remaining = 0;
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            if caps.scope != Scope::Namespaced || !caps.supports_operation(verbs::LIST) || !caps.supports_operation(verbs::DELETE) {
                continue;
            }
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
            let list = match api.list(&ListParams::default()).await {
                Ok(l) => l,
                Err(e) if crate::util::is_not_found(&e) || crate::util::is_status(&e, 405) => continue,
                Err(e) => return Err(e).with_context(|| format!("list {} in {ns}", ar.plural)),
            };
            for obj in list.items {
                remaining += 1;
                if obj.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                match api.delete(&obj.name_any(), &DeleteParams::background()).await {
                    Ok(either) => {
                        if either.is_right() {
                            // Deleted outright.
                            remaining -= 1;
                        }
                    }
                    Err(e) if crate::util::is_not_found(&e) => remaining -= 1,
                    Err(e) => tracing::warn!(namespace = %ns, kind = %ar.kind, name = %obj.name_any(), error = %e, "delete failed"),
                }
            }
        }
    }
    Ok(remaining)
}
