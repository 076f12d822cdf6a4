//! Discovery: aggregated (apidiscovery.k8s.io/v2, one round trip for kubectl) and the legacy
//! documents (/api, /api/v1, /apis, /apis/G, /apis/G/V) that drain, the Python client and older
//! tools still read. Both are derived from the catalog.

use serde_json::{json, Value};

use crate::catalog::{CatalogData, ResourceDef};

pub const AGGREGATED_CT: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether the Accept header asks for aggregated v2 discovery.
pub fn wants_aggregated(accept: Option<&str>) -> bool {
    accept.map(|a| a.split(',').any(|p| p.contains("as=APIGroupDiscoveryList") && p.contains("v=v2") && !p.contains("v=v2beta1"))).unwrap_or(false)
}

fn resource_entry(r: &ResourceDef) -> Value {
    let subs: Vec<Value> = r
        .subresources
        .iter()
        .map(|s| json!({"subresource": s.name, "responseKind": {"group": s.group, "version": s.version, "kind": s.kind}, "verbs": s.verbs}))
        .collect();
    let mut e = json!({
        "resource": r.plural,
        "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": r.singular,
        "verbs": r.verbs,
    });
    if !r.short_names.is_empty() {
        e["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        e["categories"] = json!(r.categories);
    }
    if !subs.is_empty() {
        e["subresources"] = json!(subs);
    }
    e
}

/// The aggregated document for the core group (`core` true, /api) or the named groups (/apis).
pub fn aggregated(cat: &CatalogData, core: bool) -> Value {
    let mut items = Vec::new();
    for (group, versions) in cat.groups() {
        if group.is_empty() != core {
            continue;
        }
        let vs: Vec<Value> = versions
            .iter()
            .map(|v| {
                let resources: Vec<Value> = cat.resources.iter().filter(|r| r.group == group && &r.version == v).map(|r| resource_entry(r)).collect();
                json!({"version": v, "resources": resources, "freshness": "Current"})
            })
            .collect();
        items.push(json!({"metadata": {"name": group, "creationTimestamp": null}, "versions": vs}));
    }
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

pub fn api_versions(server_address: &str) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]})
}

fn group_doc(group: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions.iter().map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v})).collect();
    json!({"name": group, "versions": vs, "preferredVersion": vs.first().cloned().unwrap_or(Value::Null)})
}

pub fn api_group_list(cat: &CatalogData) -> Value {
    let groups: Vec<Value> = cat.groups().iter().filter(|(g, _)| !g.is_empty()).map(|(g, vs)| group_doc(g, vs)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn api_group(cat: &CatalogData, group: &str) -> Option<Value> {
    cat.groups().iter().find(|(g, _)| g == group).map(|(g, vs)| {
        let mut d = group_doc(g, vs);
        d["kind"] = json!("APIGroup");
        d["apiVersion"] = json!("v1");
        d
    })
}

/// APIResourceList for one group/version, subresources as `pods/status` entries.
pub fn resource_list(cat: &CatalogData, group: &str, version: &str) -> Option<Value> {
    let rs: Vec<&std::sync::Arc<ResourceDef>> = cat.resources.iter().filter(|r| r.group == group && r.version == version).collect();
    if rs.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for r in rs {
        let mut e = json!({"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind, "verbs": r.verbs});
        if !r.short_names.is_empty() {
            e["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            e["categories"] = json!(r.categories);
        }
        out.push(e);
        for s in &r.subresources {
            let mut se = json!({"name": format!("{}/{}", r.plural, s.name), "singularName": "", "namespaced": r.namespaced, "kind": s.kind, "verbs": s.verbs});
            if s.group != r.group || s.version != r.version {
                se["group"] = json!(s.group);
                se["version"] = json!(s.version);
            }
            out.push(se);
        }
    }
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": out}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    #[test]
    fn aggregated_core_lists_pods_with_eviction_in_policy_v1() {
        let cat = Catalog::new().get();
        let doc = aggregated(&cat, true);
        assert_eq!(doc["items"].as_array().map(Vec::len), Some(1));
        let res = doc["items"][0]["versions"][0]["resources"].as_array().cloned().unwrap_or_default();
        let pods = res.iter().find(|r| r["resource"] == "pods").cloned().unwrap_or_default();
        assert_eq!(pods["shortNames"], json!(["po"]));
        let ev = pods["subresources"].as_array().and_then(|s| s.iter().find(|s| s["subresource"] == "eviction")).cloned().unwrap_or_default();
        assert_eq!(ev["responseKind"], json!({"group": "policy", "version": "v1", "kind": "Eviction"}));
        assert!(wants_aggregated(Some("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json")));
        assert!(!wants_aggregated(Some("application/json")));
    }

    #[test]
    fn legacy_core_list_names_subresources_with_their_group() {
        let cat = Catalog::new().get();
        let doc = resource_list(&cat, "", "v1").expect("v1");
        let ev = doc["resources"].as_array().and_then(|a| a.iter().find(|r| r["name"] == "pods/eviction")).cloned().unwrap_or_default();
        assert_eq!(ev["group"], "policy");
        assert_eq!(ev["kind"], "Eviction");
        assert!(resource_list(&cat, "nope", "v1").is_none());
        assert!(api_group(&cat, "apps").is_some());
    }
}
