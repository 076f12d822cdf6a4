//! Garbage collector: a graph of ownerReferences over every listable resource (from API
//! discovery, kept current by kube-runtime watchers). It deletes dependents whose owners are
//! all gone, and carries out `foregroundDeletion` and `orphan` finalizers on owners.
//!
//! The graph only nominates candidates: an owner missing from it is looked up live (by name,
//! compared by uid) before anything is deleted, so a lagging watch never deletes live objects.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions, PropagationPolicy};
use kube::core::PartialObjectMeta;
use kube::discovery::{verbs, Discovery, Scope};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;

const FOREGROUND: &str = "foregroundDeletion";
const ORPHAN: &str = "orphan";

#[derive(Clone, Debug)]
struct Node {
    res: usize,
    namespace: Option<String>,
    name: String,
    owners: Vec<OwnerReference>,
    deleting: bool,
    finalizers: Vec<String>,
}

#[derive(Default)]
struct Graph {
    nodes: HashMap<String, Node>,
    /// owner uid → dependent uids (from the dependents' ownerReferences).
    dependents: HashMap<String, HashSet<String>>,
    /// uids queued for a check, so each is queued once.
    pending: HashSet<String>,
}

struct Gc {
    client: Client,
    /// Append-only: a node's `res` indexes it. CRDs created later are added by `rediscover`.
    resources: std::sync::RwLock<Vec<(ApiResource, Scope)>>,
    graph: Mutex<Graph>,
    queue: mpsc::UnboundedSender<String>,
}

/// The resources the collector follows: everything listable, watchable and deletable, but
/// Events (they neither own nor are owned in practice, and are the busiest resource).
async fn discover(client: &Client) -> anyhow::Result<Vec<(ApiResource, Scope)>> {
    let discovery = Discovery::new(client.clone()).run().await.context("API discovery")?;
    let mut resources = Vec::new();
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            if ar.plural == "events" || !(caps.supports_operation(verbs::LIST) && caps.supports_operation(verbs::WATCH) && caps.supports_operation(verbs::DELETE)) {
                continue;
            }
            resources.push((ar, caps.scope.clone()));
        }
    }
    Ok(resources)
}

pub async fn run(client: Client) -> anyhow::Result<()> {
    let resources = discover(&client).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let count = resources.len();
    let gc = Arc::new(Gc { client, resources: std::sync::RwLock::new(resources), graph: Mutex::new(Graph::default()), queue: tx });
    let (synced_tx, mut synced_rx) = mpsc::channel::<()>(count.max(1));
    let mut watchers = tokio::task::JoinSet::new();
    for i in 0..count {
        watchers.spawn(watch_resource(gc.clone(), i, synced_tx.clone()));
    }
    // Start once every initial list is in, to spare live lookups of owners not yet seen.
    let _ = tokio::time::timeout(Duration::from_secs(15), async {
        for _ in 0..count {
            synced_rx.recv().await;
        }
    })
    .await;
    tracing::info!(resources = count, "garbage collector started");
    let (new_tx, mut new_rx) = mpsc::unbounded_channel::<usize>();
    watchers.spawn(rediscover(gc.clone(), new_tx));
    loop {
        tokio::select! {
            Some(res) = new_rx.recv() => {
                watchers.spawn(watch_resource(gc.clone(), res, synced_tx.clone()));
            }
            uid = rx.recv() => {
                let Some(uid) = uid else { break };
                gc.lock().pending.remove(&uid);
                if let Err(e) = gc.process(&uid).await {
                    tracing::debug!(uid, error = %format!("{e:#}"), "garbage collection failed; retrying");
                    let gc = gc.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        gc.enqueue(uid);
                    });
                }
            }
        }
    }
    Ok(())
}

/// Follows CustomResourceDefinitions: an established CRD's resource gets a watcher unless it is
/// followed already (its index is sent to the main loop, which owns the watcher tasks). The
/// resource comes from the CRD itself, not from discovery: the replica answering discovery may
/// not have taken the new CRD in yet when its watch event arrives here, and no later event would
/// make us look again. A watcher on a resource its replica does not serve yet retries.
async fn rediscover(gc: Arc<Gc>, new: mpsc::UnboundedSender<usize>) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(gc.client.clone());
    let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    while let Some(ev) = stream.next().await {
        let (Ok(Event::Apply(crd)) | Ok(Event::InitApply(crd))) = ev else { continue };
        let Some((ar, scope)) = crd_resource(&crd) else { continue };
        let mut resources = gc.resources.write().unwrap_or_else(|p| p.into_inner());
        if resources.iter().any(|(r, _)| r.group == ar.group && r.plural == ar.plural) {
            continue;
        }
        tracing::info!(resource = %ar.plural, group = %ar.group, "garbage collector follows a new resource");
        resources.push((ar, scope));
        let _ = new.send(resources.len() - 1);
    }
}

/// The resource an established CRD serves, at its storage version if served (any served
/// version reads the same objects), with the CRD's scope.
fn crd_resource(crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition) -> Option<(ApiResource, Scope)> {
    let established = crd.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"));
    if !established || crd.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let spec = &crd.spec;
    let served: Vec<_> = spec.versions.iter().filter(|v| v.served).collect();
    let version = served.iter().find(|v| v.storage).or(served.first())?;
    let gvk = kube::api::GroupVersionKind::gvk(&spec.group, &version.name, &spec.names.kind);
    let ar = ApiResource::from_gvk_with_plural(&gvk, &spec.names.plural);
    let scope = if spec.scope == "Cluster" { Scope::Cluster } else { Scope::Namespaced };
    Some((ar, scope))
}

async fn watch_resource(gc: Arc<Gc>, res: usize, synced: mpsc::Sender<()>) {
    let ar = gc.resource(res).0;
    // Metadata only (PartialObjectMetadata), as upstream's collector watches: owners,
    // finalizers and deletion are all it needs, and decoding whole objects cost it the most.
    let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(gc.client.clone(), &ar);
    let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    let mut seen: Option<HashSet<String>> = None;
    let mut signalled = false;
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(Event::Init) => seen = Some(HashSet::new()),
            Ok(Event::InitApply(o)) => {
                if let (Some(s), Some(uid)) = (seen.as_mut(), o.metadata.uid.clone()) {
                    s.insert(uid);
                }
                gc.apply(res, &o);
            }
            Ok(Event::InitDone) => {
                // A relist: whatever this resource had that the list lacks is gone.
                let seen = seen.take().unwrap_or_default();
                let gone: Vec<String> = gc.lock().nodes.iter().filter(|(u, n)| n.res == res && !seen.contains(*u)).map(|(u, _)| u.clone()).collect();
                for u in gone {
                    gc.remove(&u);
                }
                if !signalled {
                    signalled = true;
                    let _ = synced.try_send(());
                }
            }
            Ok(Event::Apply(o)) => gc.apply(res, &o),
            Ok(Event::Delete(o)) => {
                if let Some(u) = o.metadata.uid.as_deref() {
                    gc.remove(u);
                }
            }
            Err(e) => tracing::debug!(resource = %ar.plural, error = %e, "gc watch error"),
        }
    }
}

impl Gc {
    fn lock(&self) -> std::sync::MutexGuard<'_, Graph> {
        self.graph.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn resource(&self, res: usize) -> (ApiResource, Scope) {
        self.resources.read().unwrap_or_else(|p| p.into_inner())[res].clone()
    }

    fn enqueue(&self, uid: String) {
        if self.lock().pending.insert(uid.clone()) {
            let _ = self.queue.send(uid);
        }
    }

    fn apply(&self, res: usize, o: &PartialObjectMeta<DynamicObject>) {
        let Some(uid) = o.metadata.uid.clone() else { return };
        let node = Node {
            res,
            namespace: o.metadata.namespace.clone(),
            name: o.name_any(),
            owners: o.metadata.owner_references.clone().unwrap_or_default(),
            deleting: o.metadata.deletion_timestamp.is_some(),
            finalizers: o.metadata.finalizers.clone().unwrap_or_default(),
        };
        let interesting = !node.owners.is_empty() || (node.deleting && node.finalizers.iter().any(|f| f == FOREGROUND || f == ORPHAN));
        {
            let mut g = self.lock();
            if let Some(old) = g.nodes.get(&uid).cloned() {
                for r in &old.owners {
                    if let Some(d) = g.dependents.get_mut(&r.uid) {
                        d.remove(&uid);
                    }
                }
            }
            for r in &node.owners {
                g.dependents.entry(r.uid.clone()).or_default().insert(uid.clone());
            }
            g.nodes.insert(uid.clone(), node);
        }
        if interesting {
            self.enqueue(uid);
        }
    }

    fn remove(&self, uid: &str) {
        let (owners, deps) = {
            let mut g = self.lock();
            let Some(old) = g.nodes.remove(uid) else { return };
            for r in &old.owners {
                if let Some(d) = g.dependents.get_mut(&r.uid) {
                    d.remove(uid);
                    if d.is_empty() {
                        g.dependents.remove(&r.uid);
                    }
                }
            }
            (old.owners, g.dependents.get(uid).cloned().unwrap_or_default())
        };
        // Its dependents may be orphans now; an owner may have been waiting for it.
        deps.into_iter().for_each(|d| self.enqueue(d));
        owners.into_iter().for_each(|o| self.enqueue(o.uid));
    }

    fn api(&self, res: usize, namespace: Option<&str>) -> Api<DynamicObject> {
        let (ar, scope) = self.resource(res);
        match (scope, namespace) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &ar),
            _ => Api::all_with(self.client.clone(), &ar),
        }
    }

    /// The resource an ownerReference names: by apiVersion and kind, else by group and kind.
    fn resolve(&self, r: &OwnerReference) -> Option<usize> {
        let group = r.api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
        let resources = self.resources.read().unwrap_or_else(|p| p.into_inner());
        resources.iter().position(|(ar, _)| ar.api_version == r.api_version && ar.kind == r.kind).or_else(|| resources.iter().position(|(ar, _)| ar.group == group && ar.kind == r.kind))
    }

    async fn process(&self, uid: &str) -> anyhow::Result<()> {
        let Some(node) = self.lock().nodes.get(uid).cloned() else { return Ok(()) };
        if node.deleting {
            if node.finalizers.iter().any(|f| f == ORPHAN) {
                return self.orphan_dependents(uid, &node).await;
            }
            if node.finalizers.iter().any(|f| f == FOREGROUND) {
                return self.delete_dependents_first(uid, &node).await;
            }
            return Ok(());
        }
        if node.owners.is_empty() {
            return Ok(());
        }
        let mut solid = false;
        let mut waiting = false;
        for r in &node.owners {
            match self.owner_state(r, &node).await? {
                OwnerState::Solid => solid = true,
                OwnerState::WaitingForDependents => waiting = true,
                OwnerState::Absent => {}
            }
        }
        if solid {
            return Ok(());
        }
        // Foreground: this object's own dependents must go before it, too.
        let policy = if waiting && self.lock().dependents.get(uid).map(|d| !d.is_empty()).unwrap_or(false) { PropagationPolicy::Foreground } else { PropagationPolicy::Background };
        tracing::info!(kind = %self.resource(node.res).0.kind, namespace = ?node.namespace, name = %node.name, "deleting dependent: owners gone");
        self.delete(uid, &node, policy).await
    }

    async fn owner_state(&self, r: &OwnerReference, dependent: &Node) -> anyhow::Result<OwnerState> {
        if let Some(o) = self.lock().nodes.get(&r.uid) {
            return Ok(if o.deleting && o.finalizers.iter().any(|f| f == FOREGROUND) { OwnerState::WaitingForDependents } else { OwnerState::Solid });
        }
        let Some(res) = self.resolve(r) else {
            // A kind we cannot look up: never delete on a guess.
            return Ok(OwnerState::Solid);
        };
        let ns = if self.resource(res).1 == Scope::Namespaced { dependent.namespace.as_deref() } else { None };
        let live = self.api(res, ns).get_opt(&r.name).await.with_context(|| format!("get owner {} {}", r.kind, r.name))?;
        Ok(match live {
            Some(o) if o.metadata.uid.as_deref() == Some(&r.uid) => {
                if o.metadata.deletion_timestamp.is_some() && o.finalizers().iter().any(|f| f == FOREGROUND) {
                    OwnerState::WaitingForDependents
                } else {
                    OwnerState::Solid
                }
            }
            _ => OwnerState::Absent,
        })
    }

    async fn delete(&self, uid: &str, node: &Node, policy: PropagationPolicy) -> anyhow::Result<()> {
        let dp = DeleteParams { propagation_policy: Some(policy), preconditions: Some(Preconditions { uid: Some(uid.to_string()), resource_version: None }), ..Default::default() };
        match self.api(node.res, node.namespace.as_deref()).delete(&node.name, &dp).await {
            Ok(_) => Ok(()),
            // Gone already, or a different object by that name now.
            Err(e) if crate::util::is_not_found(&e) || crate::util::is_status(&e, 409) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("delete {} {}", self.resource(node.res).0.kind, node.name)),
        }
    }

    fn dependents_of(&self, uid: &str) -> Vec<(String, Node)> {
        let g = self.lock();
        g.dependents.get(uid).into_iter().flatten().filter_map(|d| g.nodes.get(d).map(|n| (d.clone(), n.clone()))).collect()
    }

    async fn delete_dependents_first(&self, uid: &str, node: &Node) -> anyhow::Result<()> {
        let deps = self.dependents_of(uid);
        if deps.is_empty() {
            return self.remove_finalizer(node, FOREGROUND).await;
        }
        for (duid, d) in deps {
            if d.deleting {
                continue;
            }
            // Another live owner keeps it; then it only stops pointing at us.
            let mut other_solid = false;
            for r in d.owners.iter().filter(|r| r.uid != uid) {
                if self.owner_state(r, &d).await? == OwnerState::Solid {
                    other_solid = true;
                }
            }
            if other_solid {
                self.drop_owner_ref(&d, uid).await?;
            } else {
                let policy = if self.lock().dependents.get(&duid).map(|x| !x.is_empty()).unwrap_or(false) { PropagationPolicy::Foreground } else { PropagationPolicy::Background };
                self.delete(&duid, &d, policy).await?;
            }
        }
        // The dependents' deletions requeue us (see remove).
        Ok(())
    }

    async fn orphan_dependents(&self, uid: &str, node: &Node) -> anyhow::Result<()> {
        for (_, d) in self.dependents_of(uid) {
            self.drop_owner_ref(&d, uid).await?;
        }
        self.remove_finalizer(node, ORPHAN).await
    }

    /// Removes the ownerReference to `owner_uid`, read live and written with its
    /// resourceVersion so a concurrent change is not overwritten.
    async fn drop_owner_ref(&self, d: &Node, owner_uid: &str) -> anyhow::Result<()> {
        let api = self.api(d.res, d.namespace.as_deref());
        let Some(cur) = api.get_opt(&d.name).await.with_context(|| format!("get {}", d.name))? else { return Ok(()) };
        let refs: Vec<&OwnerReference> = cur.metadata.owner_references.iter().flatten().filter(|r| r.uid != owner_uid).collect();
        if refs.len() == cur.metadata.owner_references.as_ref().map(Vec::len).unwrap_or(0) {
            return Ok(());
        }
        // null, not [], so the field goes away as with a strategic merge patch.
        let refs = if refs.is_empty() { serde_json::Value::Null } else { json!(refs) };
        let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": cur.metadata.resource_version}});
        api.patch(&d.name, &PatchParams::default(), &Patch::Merge(patch)).await.with_context(|| format!("remove owner reference from {}", d.name))?;
        Ok(())
    }

    async fn remove_finalizer(&self, node: &Node, finalizer: &str) -> anyhow::Result<()> {
        let api = self.api(node.res, node.namespace.as_deref());
        let Some(cur) = api.get_opt(&node.name).await.with_context(|| format!("get {}", node.name))? else { return Ok(()) };
        let fins: Vec<&String> = cur.finalizers().iter().filter(|f| *f != finalizer).collect();
        if fins.len() == cur.finalizers().len() {
            return Ok(());
        }
        let fins = if fins.is_empty() { serde_json::Value::Null } else { json!(fins) };
        let patch = json!({"metadata": {"finalizers": fins, "resourceVersion": cur.metadata.resource_version}});
        api.patch(&node.name, &PatchParams::default(), &Patch::Merge(patch)).await.with_context(|| format!("remove finalizer {finalizer} from {}", node.name))?;
        tracing::info!(kind = %self.resource(node.res).0.kind, name = %node.name, finalizer, "finalizer done");
        Ok(())
    }
}

#[derive(Debug, PartialEq)]
enum OwnerState {
    Solid,
    WaitingForDependents,
    Absent,
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

    fn crd(status: &str, versions: serde_json::Value) -> CustomResourceDefinition {
        serde_json::from_value(json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Cluster", "names": {"plural": "widgets", "kind": "Widget"}, "versions": versions},
            "status": {"conditions": [{"type": "Established", "status": status}]}
        }))
        .expect("crd")
    }

    #[test]
    fn an_established_crd_is_followed_at_its_served_storage_version() {
        let versions = json!([{"name": "v1", "served": true, "storage": false}, {"name": "v2", "served": true, "storage": true}, {"name": "v3", "served": false, "storage": false}]);
        let (ar, scope) = crd_resource(&crd("True", versions)).expect("followed");
        assert_eq!((ar.group.as_str(), ar.version.as_str(), ar.api_version.as_str(), ar.kind.as_str(), ar.plural.as_str()), ("example.com", "v2", "example.com/v2", "Widget", "widgets"));
        assert!(matches!(scope, Scope::Cluster));
        // Storage version not served: the first served one.
        let (ar, _) = crd_resource(&crd("True", json!([{"name": "v1", "served": false, "storage": true}, {"name": "v2", "served": true, "storage": false}]))).expect("followed");
        assert_eq!(ar.version, "v2");
    }

    #[test]
    fn crds_not_established_or_serving_nothing_are_not_followed() {
        assert!(crd_resource(&crd("False", json!([{"name": "v1", "served": true, "storage": true}]))).is_none());
        assert!(crd_resource(&crd("True", json!([{"name": "v1", "served": false, "storage": true}]))).is_none());
    }
}
