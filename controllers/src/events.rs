//! core/v1 Events, which `kubectl describe` and `kubectl get events` read. Best effort: a
//! failed event must not fail a reconcile.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::{Client, Resource};

pub async fn normal<K: Resource<DynamicType = ()>>(client: &Client, component: &str, obj: &K, reason: &str, message: String) {
    record(client, component, obj, "Normal", reason, message).await
}

pub async fn record<K: Resource<DynamicType = ()>>(client: &Client, component: &str, obj: &K, type_: &str, reason: &str, message: String) {
    let m = obj.meta();
    let ns = m.namespace.clone().unwrap_or_else(|| "default".into());
    let name = m.name.clone().unwrap_or_default();
    let now = crate::util::now();
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
    if let Err(e) = Api::<Event>::namespaced(client.clone(), &ns).create(&PostParams::default(), &ev).await {
        tracing::debug!(error = %e, reason, "could not record event");
    }
}
