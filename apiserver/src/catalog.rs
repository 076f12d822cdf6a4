//! The table of served resources: what discovery lists, what the router resolves, and for each
//! built-in kind the k8s-openapi type that normalizes its objects and yields its schema.
//!
//! Built-ins come from k8s-openapi (API 1.33); every name, group, version, plural and scope is
//! read from the type's `Resource` impl so that the table cannot drift from the types.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope, Resource as K8sResource};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

/// The Kubernetes minor version whose types we serve (k8s-openapi feature v1_33). kubectl's
/// dispatcher picks its client by this number.
pub const KUBE_MINOR: &str = "33";
pub const KUBE_GIT_VERSION: &str = "v1.33.0-kuberaft";

/// How a built-in kind's objects are checked and normalized, and its schema.
#[derive(Clone, Copy)]
pub struct Typed {
    /// Decode into the k8s-openapi type and encode again: unknown fields disappear, wrong types
    /// fail. The error is serde's message.
    pub normalize: fn(&Value) -> Result<Value, String>,
    pub schema: fn(&mut SchemaGenerator) -> Schema,
    pub schema_name: fn() -> String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Subresource {
    pub name: &'static str,
    pub group: String,
    pub version: String,
    pub kind: String,
    pub verbs: Vec<&'static str>,
}

#[derive(Clone)]
pub struct ResourceDef {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub list_kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub verbs: Vec<&'static str>,
    pub subresources: Vec<Subresource>,
    /// None for custom resources (schema from their CRD).
    pub typed: Option<Typed>,
    /// Store key prefix, ending in '/': "/registry/pods/".
    pub storage: String,
    /// CRD openAPIV3Schema for custom resources.
    pub crd_schema: Option<Value>,
    /// CRD additionalPrinterColumns (custom resources only).
    pub printer_columns: Vec<Value>,
    /// Where the scale subresource reads and writes: spec replicas, status replicas, label
    /// selector (dotted paths like ".spec.replicas"; the selector path may be empty).
    pub scale_paths: (String, String, String),
}

impl std::fmt::Debug for ResourceDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} {}", self.group, self.version, self.plural)
    }
}

impl ResourceDef {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    pub fn gr(&self) -> crate::error::GroupResource {
        crate::error::GroupResource { group: self.group.clone(), resource: self.plural.clone() }
    }
    pub fn has_sub(&self, name: &str) -> bool {
        self.subresources.iter().any(|s| s.name == name)
    }
    /// Path of the collection in a namespace (or cluster-wide).
    pub fn collection_path(&self, ns: Option<&str>) -> String {
        let base = if self.group.is_empty() { "/api/v1".to_string() } else { format!("/apis/{}/{}", self.group, self.version) };
        match ns {
            Some(ns) if self.namespaced => format!("{base}/namespaces/{ns}/{}", self.plural),
            _ => format!("{base}/{}", self.plural),
        }
    }
}

trait Scope {
    const NAMESPACED: bool;
}
impl Scope for NamespaceResourceScope {
    const NAMESPACED: bool = true;
}
impl Scope for ClusterResourceScope {
    const NAMESPACED: bool = false;
}

fn normalize<T: DeserializeOwned + Serialize>(v: &Value) -> Result<Value, String> {
    // From a borrowed Value: no copy of the object just to decode it.
    let t = T::deserialize(v).map_err(|e| e.to_string())?;
    serde_json::to_value(&t).map_err(|e| e.to_string())
}

fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

fn schema_name<T: JsonSchema>() -> String {
    T::schema_name().into_owned()
}

const RW: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];
const STATUS_VERBS: &[&str] = &["get", "patch", "update"];

fn builtin<T>(singular: &str, short: &[&str], categories: &[&str], subs: &[(&'static str, &str, &str, &str, &[&'static str])]) -> ResourceDef
where
    T: K8sResource + DeserializeOwned + Serialize + JsonSchema,
    T::Scope: Scope,
{
    let group = T::GROUP.to_string();
    let version = T::VERSION.to_string();
    let kind = T::KIND.to_string();
    let plural = T::URL_PATH_SEGMENT.to_string();
    let subresources = subs
        .iter()
        .map(|(name, g, v, k, verbs)| {
            // "" group/version/kind in the table means "the resource's own".
            let (g, v, k) = if k.is_empty() { (group.clone(), version.clone(), kind.clone()) } else { (g.to_string(), v.to_string(), k.to_string()) };
            Subresource { name, group: g, version: v, kind: k, verbs: verbs.to_vec() }
        })
        .collect();
    // events.k8s.io Events live apart from core Events (upstream shares their storage; see
    // ARCHITECTURE.md).
    let storage = if group.is_empty() || group == "apps" || group == "batch" { format!("/registry/{plural}/") } else { format!("/registry/{group}/{plural}/") };
    ResourceDef {
        list_kind: format!("{kind}List"),
        group,
        version,
        kind,
        plural,
        singular: singular.to_string(),
        namespaced: T::Scope::NAMESPACED,
        short_names: short.iter().map(|s| s.to_string()).collect(),
        categories: categories.iter().map(|s| s.to_string()).collect(),
        verbs: RW.to_vec(),
        subresources,
        typed: Some(Typed { normalize: normalize::<T>, schema: schema::<T>, schema_name: schema_name::<T> }),
        storage,
        crd_schema: None,
        printer_columns: vec![],
        scale_paths: (".spec.replicas".into(), ".status.replicas".into(), ".spec.selector".into()),
    }
}

const SCALE: (&str, &str, &str, &str, &[&str]) = ("scale", "autoscaling", "v1", "Scale", STATUS_VERBS);
const STATUS: (&str, &str, &str, &str, &[&str]) = ("status", "", "", "", STATUS_VERBS);

/// Every built-in resource, in discovery order (group priority as upstream, then versions).
pub fn builtins() -> Vec<ResourceDef> {
    use k8s_openapi::api::*;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
    let all = &["all"];
    vec![
        // core/v1
        builtin::<core::v1::Namespace>("namespace", &["ns"], &[], &[STATUS, ("finalize", "", "", "", &["update"])]),
        builtin::<core::v1::Pod>(
            "pod",
            &["po"],
            all,
            &[
                STATUS,
                ("binding", "", "v1", "Binding", &["create"]),
                ("eviction", "policy", "v1", "Eviction", &["create"]),
                ("log", "", "v1", "Pod", &["get"]),
                ("exec", "", "v1", "PodExecOptions", &["create", "get"]),
                ("attach", "", "v1", "PodAttachOptions", &["create", "get"]),
                ("portforward", "", "v1", "PodPortForwardOptions", &["create", "get"]),
            ],
        ),
        builtin::<core::v1::Node>("node", &["no"], &[], &[STATUS]),
        builtin::<core::v1::Service>("service", &["svc"], all, &[STATUS]),
        builtin::<core::v1::Endpoints>("endpoints", &["ep"], &[], &[]),
        builtin::<core::v1::ConfigMap>("configmap", &["cm"], &[], &[]),
        builtin::<core::v1::Secret>("secret", &[], &[], &[]),
        builtin::<core::v1::ServiceAccount>("serviceaccount", &["sa"], &[], &[("token", "authentication.k8s.io", "v1", "TokenRequest", &["create"])]),
        builtin::<core::v1::Event>("event", &["ev"], &[], &[]),
        builtin::<core::v1::PersistentVolume>("persistentvolume", &["pv"], &[], &[STATUS]),
        builtin::<core::v1::PersistentVolumeClaim>("persistentvolumeclaim", &["pvc"], &[], &[STATUS]),
        builtin::<core::v1::LimitRange>("limitrange", &["limits"], &[], &[]),
        builtin::<core::v1::ResourceQuota>("resourcequota", &["quota"], &[], &[STATUS]),
        builtin::<core::v1::ReplicationController>("replicationcontroller", &["rc"], all, &[STATUS, SCALE]),
        builtin::<core::v1::PodTemplate>("podtemplate", &[], &[], &[]),
        // apps/v1
        builtin::<apps::v1::Deployment>("deployment", &["deploy"], all, &[STATUS, SCALE]),
        builtin::<apps::v1::ReplicaSet>("replicaset", &["rs"], all, &[STATUS, SCALE]),
        builtin::<apps::v1::StatefulSet>("statefulset", &["sts"], all, &[STATUS, SCALE]),
        builtin::<apps::v1::DaemonSet>("daemonset", &["ds"], all, &[STATUS]),
        builtin::<apps::v1::ControllerRevision>("controllerrevision", &[], &[], &[]),
        builtin::<events::v1::Event>("event", &["ev"], &[], &[]),
        builtin::<autoscaling::v2::HorizontalPodAutoscaler>("horizontalpodautoscaler", &["hpa"], all, &[STATUS]),
        builtin::<batch::v1::Job>("job", &[], all, &[STATUS]),
        builtin::<batch::v1::CronJob>("cronjob", &["cj"], all, &[STATUS]),
        builtin::<networking::v1::Ingress>("ingress", &["ing"], &[], &[STATUS]),
        builtin::<networking::v1::IngressClass>("ingressclass", &[], &[], &[]),
        builtin::<networking::v1::NetworkPolicy>("networkpolicy", &["netpol"], &[], &[]),
        builtin::<policy::v1::PodDisruptionBudget>("poddisruptionbudget", &["pdb"], &[], &[STATUS]),
        builtin::<rbac::v1::ClusterRole>("clusterrole", &[], &[], &[]),
        builtin::<rbac::v1::ClusterRoleBinding>("clusterrolebinding", &[], &[], &[]),
        builtin::<rbac::v1::Role>("role", &[], &[], &[]),
        builtin::<rbac::v1::RoleBinding>("rolebinding", &[], &[], &[]),
        builtin::<storage::v1::StorageClass>("storageclass", &["sc"], &[], &[]),
        builtin::<apiext::CustomResourceDefinition>("customresourcedefinition", &["crd", "crds"], &[], &[STATUS]),
        builtin::<scheduling::v1::PriorityClass>("priorityclass", &["pc"], &[], &[]),
        builtin::<coordination::v1::Lease>("lease", &[], &[], &[]),
        builtin::<discovery::v1::EndpointSlice>("endpointslice", &[], &[], &[]),
        review(builtin::<authorization::v1::SelfSubjectAccessReview>("selfsubjectaccessreview", &[], &[], &[])),
        review(builtin::<authorization::v1::SubjectAccessReview>("subjectaccessreview", &[], &[], &[])),
        review(builtin::<authorization::v1::LocalSubjectAccessReview>("localsubjectaccessreview", &[], &[], &[])),
        review(builtin::<authentication::v1::TokenReview>("tokenreview", &[], &[], &[])),
        review(builtin::<authentication::v1::SelfSubjectReview>("selfsubjectreview", &[], &[], &[])),
    ]
}

/// Reviews are asked, not stored: create is their only verb.
fn review(mut r: ResourceDef) -> ResourceDef {
    r.verbs = vec!["create"];
    r
}

impl ResourceDef {
    /// Whether this resource answers a question instead of storing objects.
    pub fn is_review(&self) -> bool {
        self.verbs == ["create"] && (self.group == "authorization.k8s.io" || self.group == "authentication.k8s.io")
    }
}

/// The served resources. Shared by every request; replaced as a whole when CRDs change.
#[derive(Clone)]
pub struct Catalog {
    inner: Arc<RwLock<Arc<CatalogData>>>,
}

pub struct CatalogData {
    pub resources: Vec<Arc<ResourceDef>>,
    by_path: HashMap<(String, String, String), Arc<ResourceDef>>,
    by_kind: HashMap<(String, String), Arc<ResourceDef>>,
}

impl CatalogData {
    fn new(defs: Vec<ResourceDef>) -> CatalogData {
        let resources: Vec<Arc<ResourceDef>> = defs.into_iter().map(Arc::new).collect();
        let mut by_path = HashMap::new();
        let mut by_kind = HashMap::new();
        for r in &resources {
            by_path.insert((r.group.clone(), r.version.clone(), r.plural.clone()), r.clone());
            by_kind.entry((r.api_version(), r.kind.clone())).or_insert_with(|| r.clone());
        }
        CatalogData { resources, by_path, by_kind }
    }

    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceDef>> {
        self.by_path.get(&(group.to_string(), version.to_string(), plural.to_string())).cloned()
    }

    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<Arc<ResourceDef>> {
        self.by_kind.get(&(api_version.to_string(), kind.to_string())).cloned()
    }

    /// Group names in discovery order, each with its versions in preference order.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for r in &self.resources {
            match out.iter_mut().find(|(g, _)| *g == r.group) {
                Some((_, vs)) => {
                    if !vs.contains(&r.version) {
                        vs.push(r.version.clone())
                    }
                }
                None => out.push((r.group.clone(), vec![r.version.clone()])),
            }
        }
        out
    }
}

impl Catalog {
    pub fn new() -> Catalog {
        Catalog { inner: Arc::new(RwLock::new(Arc::new(CatalogData::new(builtins())))) }
    }

    pub fn get(&self) -> Arc<CatalogData> {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the custom resources (built-ins stay).
    pub fn set_custom(&self, custom: Vec<ResourceDef>) {
        let mut defs = builtins();
        // A custom resource never replaces a built-in one.
        let custom: Vec<ResourceDef> = custom.into_iter().filter(|c| !defs.iter().any(|b| b.group == c.group && b.version == c.version && b.plural == c.plural)).collect();
        defs.extend(custom);
        *self.inner.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(CatalogData::new(defs));
    }
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_resolve_by_path_and_kind_with_scope_from_the_types() {
        let c = Catalog::new().get();
        let pods = c.lookup("", "v1", "pods").expect("pods");
        assert!(pods.namespaced);
        assert_eq!(pods.kind, "Pod");
        assert_eq!(pods.storage, "/registry/pods/");
        let nodes = c.lookup("", "v1", "nodes").expect("nodes");
        assert!(!nodes.namespaced);
        let d = c.by_kind("apps/v1", "Deployment").expect("deployment");
        assert_eq!(d.plural, "deployments");
        assert!(d.has_sub("scale") && d.has_sub("status"));
        assert_eq!(c.lookup("events.k8s.io", "v1", "events").map(|r| r.storage.clone()).as_deref(), Some("/registry/events.k8s.io/events/"));
        assert_eq!(c.groups()[0].0, "");
    }

    #[test]
    fn normalize_drops_unknown_fields_and_rejects_wrong_types() {
        let c = Catalog::new().get();
        let cm = c.lookup("", "v1", "configmaps").expect("cm");
        let t = cm.typed.expect("typed");
        let out = (t.normalize)(&serde_json::json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x","bogus":1},"data":{"a":"b"}})).expect("ok");
        assert!(out["metadata"].get("bogus").is_none());
        assert_eq!(out["data"]["a"], "b");
        assert!((t.normalize)(&serde_json::json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"},"data":{"a":1}})).is_err());
    }
}
