//! ResourceQuota controller: keeps every quota's status (hard and used) equal to what the
//! objects in its namespace use, as upstream's resource quota controller does. Admission counts
//! usage from the objects themselves at each create, so enforcement never depends on this
//! status; this controller makes `kubectl describe quota` true again after deletes, pods
//! finishing, and spec changes. Usage is counted with the same functions admission uses (the
//! quota crate).
//!
//! Pods, Services, claims, ConfigMaps and Secrets are watched; quotas that also count other
//! kinds (count/<resource>.<group>) are recounted every RESYNC.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, ResourceQuota, Secret, Service};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::discovery::ApiResource;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::{json, Value};

/// How often quotas counting kinds we do not watch are recounted (upstream's
/// --resource-quota-sync-period is 5 minutes).
const RESYNC: Duration = Duration::from_secs(60);

struct Ctx {
    client: Client,
}

fn in_namespace<K: Resource>(store: &Store<ResourceQuota>, obj: &K) -> Vec<ObjectRef<ResourceQuota>> {
    let ns = obj.meta().namespace.clone();
    store.state().iter().filter(|q| q.namespace() == ns).map(|q| ObjectRef::from_obj(q.as_ref())).collect()
}

pub async fn run(client: Client, inf: Arc<crate::informer::Informers>) -> anyhow::Result<()> {
    let ctl = Controller::new(Api::<ResourceQuota>::all(client.clone()), watcher::Config::default());
    let (s1, s2, s3, s4, s5) = (ctl.store(), ctl.store(), ctl.store(), ctl.store(), ctl.store());
    let cfg = watcher::Config::default;
    let ctl = ctl
        .watches_shared_stream(inf.pods.subscribe(), move |o: Arc<Pod>| in_namespace(&s1, &*o))
        .watches(Api::<Service>::all(client.clone()), cfg(), move |o: Service| in_namespace(&s2, &o))
        .watches(Api::<PersistentVolumeClaim>::all(client.clone()), cfg(), move |o: PersistentVolumeClaim| in_namespace(&s3, &o))
        .watches(Api::<ConfigMap>::all(client.clone()), cfg(), move |o: ConfigMap| in_namespace(&s4, &o))
        .watches(Api::<Secret>::all(client.clone()), cfg(), move |o: Secret| in_namespace(&s5, &o));
    crate::util::drain("resourcequota", ctl.run(reconcile, crate::util::error_policy, Arc::new(Ctx { client }))).await;
    Ok(())
}

async fn reconcile(q: Arc<ResourceQuota>, ctx: Arc<Ctx>) -> Result<Action, crate::Error> {
    Ok(sync(&q, &ctx.client).await?)
}

/// The API resource a quota resource name counts, as (group, plural); None for names this
/// accounting ignores.
pub fn counted_resource(r: &str) -> Option<(String, String)> {
    if let Some(what) = r.strip_prefix("count/") {
        return Some(match what.split_once('.') {
            Some((plural, group)) => (group.to_string(), plural.to_string()),
            None => (String::new(), what.to_string()),
        });
    }
    if !quota::is_known(r) {
        return None;
    }
    let plural = match r {
        "services" | "services.nodeports" | "services.loadbalancers" => "services",
        "persistentvolumeclaims" | "requests.storage" => "persistentvolumeclaims",
        "configmaps" | "secrets" | "replicationcontrollers" | "resourcequotas" => r,
        _ => "pods",
    };
    Some((String::new(), plural.to_string()))
}

const WATCHED: &[&str] = &["pods", "services", "persistentvolumeclaims", "configmaps", "secrets"];

async fn api_resource(client: &Client, group: &str, plural: &str) -> anyhow::Result<Option<ApiResource>> {
    let g = kube::discovery::group(client, group).await.with_context(|| format!("discover API group {group:?}"))?;
    Ok(g.recommended_resources().into_iter().map(|(ar, _)| ar).find(|ar| ar.plural == plural))
}

async fn sync(q: &ResourceQuota, client: &Client) -> anyhow::Result<Action> {
    let ns = q.namespace().context("quota without namespace")?;
    let hard: BTreeMap<String, Quantity> = q.spec.as_ref().and_then(|s| s.hard.clone()).unwrap_or_default();
    // Objects per (group, plural), listed once each.
    let mut objects: BTreeMap<(String, String), (String, Vec<Value>)> = BTreeMap::new();
    let mut unwatched = false;
    for r in hard.keys() {
        let Some(key) = counted_resource(r) else { continue };
        if objects.contains_key(&key) {
            continue;
        }
        unwatched |= !(key.0.is_empty() && WATCHED.contains(&key.1.as_str()));
        let Some(ar) = api_resource(client, &key.0, &key.1).await? else { continue };
        let list = Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &ar).list(&ListParams::default()).await.with_context(|| format!("list {} in {ns}", ar.plural))?;
        let items = list.items.into_iter().filter_map(|o| serde_json::to_value(o).ok()).collect();
        objects.insert(key, (ar.kind.clone(), items));
    }
    let mut used = BTreeMap::new();
    for r in hard.keys() {
        let Some(key) = counted_resource(r) else { continue };
        let Some((kind, items)) = objects.get(&key) else { continue };
        if !quota::counted(kind, &key.1, &key.0, r) {
            continue;
        }
        let total: f64 = items.iter().map(|o| quota::usage_of(kind, o, r)).sum();
        used.insert(r.clone(), Quantity(quota::show(r, total)));
    }
    let old = q.status.clone().unwrap_or_default();
    if old.hard.as_ref() != Some(&hard) || old.used.as_ref() != Some(&used) {
        let api: Api<ResourceQuota> = Api::namespaced(client.clone(), &ns);
        // Guarded by the version we counted against: admission rewrites used in the same
        // transaction as each new object, and a stale count must not overwrite that.
        let body = json!({"metadata": {"resourceVersion": q.metadata.resource_version}, "status": {"hard": hard, "used": used}});
        api.patch_status(&q.name_any(), &PatchParams::default(), &Patch::Merge(body)).await.with_context(|| format!("update status of resourcequota {ns}/{}", q.name_any()))?;
    }
    Ok(if unwatched { Action::requeue(RESYNC) } else { Action::await_change() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_resources_map_to_the_objects_they_count() {
        let core = |p: &str| Some((String::new(), p.to_string()));
        assert_eq!(counted_resource("requests.cpu"), core("pods"));
        assert_eq!(counted_resource("pods"), core("pods"));
        assert_eq!(counted_resource("services.nodeports"), core("services"));
        assert_eq!(counted_resource("requests.storage"), core("persistentvolumeclaims"));
        assert_eq!(counted_resource("count/configmaps"), core("configmaps"));
        assert_eq!(counted_resource("count/deployments.apps"), Some(("apps".to_string(), "deployments".to_string())));
        assert_eq!(counted_resource("example.com/gpu"), None);
    }
}
