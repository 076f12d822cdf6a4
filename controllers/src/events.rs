//! core/v1 Events, which `kubectl describe` and `kubectl get events` read. Best effort: a
//! failed event must not fail a reconcile.
//!
//! Repeats are aggregated as client-go's recorder does: an event identical to one this process
//! recorded recently (same object, type, reason, message and source) bumps that Event's count
//! and lastTimestamp instead of making a new object, so `kubectl describe` shows "x5 over 2m".

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use serde_json::json;

/// Recent events kept for aggregation (client-go's cache holds 4096).
const CACHE_SIZE: usize = 4096;

/// Identity of an event for aggregation → (namespace, Event name, count so far).
type Seen = HashMap<String, (String, String, i32)>;

fn seen() -> &'static Mutex<Seen> {
    static SEEN: OnceLock<Mutex<Seen>> = OnceLock::new();
    SEEN.get_or_init(|| Mutex::new(HashMap::new()))
}

pub async fn normal<K: Resource<DynamicType = ()>>(client: &Client, component: &str, obj: &K, reason: &str, message: String) {
    record(client, component, obj, "Normal", reason, message).await
}

pub async fn record<K: Resource<DynamicType = ()>>(client: &Client, component: &str, obj: &K, type_: &str, reason: &str, message: String) {
    let m = obj.meta();
    let ns = m.namespace.clone().unwrap_or_else(|| "default".into());
    let name = m.name.clone().unwrap_or_default();
    let now = crate::util::now();
    let api = Api::<Event>::namespaced(client.clone(), &ns);
    let key = format!("{}\u{0}{}\u{0}{ns}\u{0}{name}\u{0}{}\u{0}{type_}\u{0}{reason}\u{0}{message}\u{0}{component}", K::kind(&()), m.uid.as_deref().unwrap_or(""), K::api_version(&()));
    let previous = seen().lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned();
    if let Some((ens, ename, count)) = previous {
        let patch = json!({"count": count + 1, "lastTimestamp": now});
        match Api::<Event>::namespaced(client.clone(), &ens).patch(&ename, &PatchParams::default(), &Patch::Merge(patch)).await {
            Ok(_) => {
                seen().lock().unwrap_or_else(|p| p.into_inner()).insert(key, (ens, ename, count + 1));
                return;
            }
            // Gone (expired or deleted): record it afresh.
            Err(e) => tracing::debug!(error = %e, reason, "could not update event; creating a new one"),
        }
    }
    let ev = Event {
        metadata: ObjectMeta {
            // Unique per event, as client-go's recorder does (name.<hex nanos>).
            name: Some(format!("{name}.{:x}", now.0.as_nanosecond())),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some(K::api_version(&()).into_owned()),
            kind: Some(K::kind(&()).into_owned()),
            name: Some(name),
            namespace: m.namespace.clone(),
            uid: m.uid.clone(),
            resource_version: m.resource_version.clone(),
            ..Default::default()
        },
        reason: Some(reason.into()),
        message: Some(message),
        type_: Some(type_.into()),
        count: Some(1),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        source: Some(EventSource { component: Some(component.into()), host: None }),
        reporting_component: Some(component.into()),
        reporting_instance: Some(component.into()),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &ev).await {
        Ok(created) => {
            let mut s = seen().lock().unwrap_or_else(|p| p.into_inner());
            if s.len() >= CACHE_SIZE {
                s.clear();
            }
            s.insert(key, (ns, created.metadata.name.unwrap_or_default(), 1));
        }
        Err(e) => tracing::debug!(error = %e, reason, "could not record event"),
    }
}
