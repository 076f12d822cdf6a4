//! What every cluster starts with: the default namespaces, the bootstrap RBAC policy and the
//! `kubernetes` Service. Every replica runs this at start; creating what already exists is a
//! no-op, so replicas racing each other is harmless.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::error::ApiError;
use crate::request::{Query, Request, User};
use crate::rest::Target;
use crate::Api;

pub const NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

impl Api {
    /// Creates `obj` unless an object of that name exists. Used for system objects.
    pub async fn ensure_object(&self, obj: Value) -> Result<(), ApiError> {
        let cat = self.catalog.get();
        let api_version = obj["apiVersion"].as_str().unwrap_or("");
        let kind = obj["kind"].as_str().unwrap_or("");
        let res = cat.by_kind(api_version, kind).ok_or_else(|| ApiError::Internal(format!("no resource for {api_version} {kind}")))?;
        let ns = obj["metadata"]["namespace"].as_str().map(str::to_string);
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        let t = Target { res: res.clone(), ns, name: None, sub: None };
        let req = Request {
            method: hyper::Method::POST,
            path: String::new(),
            query: Query(vec![("fieldManager".into(), "kuberaft-bootstrap".into())]),
            headers: Default::default(),
            body: Default::default(),
            user: User { name: "system:apiserver".into(), groups: vec!["system:masters".into()] },
            upgrade: std::sync::Mutex::new(None),
        };
        if self.store.get(&Target { name: Some(name), ..t.clone() }.key(), crate::store::Freshness::Latest).await?.is_some() {
            return Ok(());
        }
        let (obj, _) = self.prepare_create(&req, &t, obj, None, Some("Ignore"))?;
        match self.create_object(&t, obj, false).await {
            Ok(_) | Err(ApiError::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn objects(api: &Api) -> Vec<Value> {
    let mut out: Vec<Value> = NAMESPACES.iter().map(|n| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "labels": {"kubernetes.io/metadata.name": n}}})).collect();
    out.extend(crate::rbac::bootstrap_policy());
    for (name, value) in crate::strategy::SYSTEM_PRIORITY_CLASSES {
        let description = if name == "system-node-critical" { "Used for system critical pods that must not be moved from their current node." } else { "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary." };
        out.push(json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": name}, "value": value, "description": description, "preemptionPolicy": "PreemptLowerPriority"}));
    }
    // The default StorageClass: local volumes made by the controller manager's provisioner on
    // the node the scheduler picks for the first pod using the claim.
    out.push(json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "local-path", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": "kuberaft.io/local-path", "reclaimPolicy": "Delete", "volumeBindingMode": "WaitForFirstConsumer",
    }));
    let ip = api.cfg.ranges.first().to_string();
    out.push(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": api.cfg.listen.port()}]},
    }));
    out
}

/// Retries until everything exists (the store may have no leader yet).
pub async fn run(api: Arc<Api>) {
    let mut delay = Duration::from_millis(200);
    loop {
        let mut failed = None;
        for obj in objects(&api) {
            if let Err(e) = api.ensure_object(obj.clone()).await {
                failed = Some(format!("{} {}: {e}", obj["kind"], obj["metadata"]["name"]));
                break;
            }
        }
        match failed {
            None => {
                tracing::info!("bootstrap objects in place");
                return;
            }
            Some(e) => {
                tracing::debug!("bootstrap: {e}; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
