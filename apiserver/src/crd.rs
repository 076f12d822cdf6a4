//! CustomResourceDefinitions: a CRD's served versions become catalog entries (discovery,
//! OpenAPI, the generic registry), its schema validates and prunes the custom objects, and its
//! printer columns drive their Tables. Every replica follows the stored CRDs through a watch,
//! so a CRD created through one replica is served by all.

use std::sync::Arc;
use std::time::Duration;

use raftstore::watch::{WatchOut, WatchSpec};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::catalog::{ResourceDef, Subresource};
use crate::error::Cause;
use crate::store::{collection_range, Freshness};
use crate::Api;

const RW: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

/// Catalog entries for each served version of a CRD (nothing for a malformed one).
pub fn defs_from_crd(crd: &Value) -> Vec<ResourceDef> {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or("").to_string();
    let names = &spec["names"];
    let (Some(plural), Some(kind)) = (names["plural"].as_str(), names["kind"].as_str()) else { return vec![] };
    if group.is_empty() || crd["metadata"].get("deletionTimestamp").is_some() {
        return vec![];
    }
    let singular = names["singular"].as_str().map(str::to_string).unwrap_or_else(|| kind.to_ascii_lowercase());
    let list_kind = names["listKind"].as_str().map(str::to_string).unwrap_or_else(|| format!("{kind}List"));
    let strs = |v: &Value| v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()).unwrap_or_default();
    let namespaced = spec["scope"].as_str() != Some("Cluster");
    let mut out = Vec::new();
    for v in spec["versions"].as_array().into_iter().flatten() {
        if v["served"].as_bool() != Some(true) {
            continue;
        }
        let Some(version) = v["name"].as_str() else { continue };
        let mut subresources = Vec::new();
        if v["subresources"].get("status").is_some() {
            subresources.push(Subresource { name: "status", group: group.clone(), version: version.to_string(), kind: kind.to_string(), verbs: vec!["get", "patch", "update"] });
        }
        if v["subresources"].get("scale").is_some() {
            subresources.push(Subresource { name: "scale", group: "autoscaling".into(), version: "v1".into(), kind: "Scale".into(), verbs: vec!["get", "patch", "update"] });
        }
        out.push(ResourceDef {
            group: group.clone(),
            version: version.to_string(),
            kind: kind.to_string(),
            list_kind: list_kind.clone(),
            plural: plural.to_string(),
            singular: singular.clone(),
            namespaced,
            short_names: strs(&names["shortNames"]),
            categories: strs(&names["categories"]),
            verbs: RW.to_vec(),
            subresources,
            typed: None,
            storage: format!("/registry/{group}/{plural}/"),
            crd_schema: Some(v["schema"]["openAPIV3Schema"].clone()).filter(|s| s.is_object()),
            printer_columns: v["additionalPrinterColumns"].as_array().cloned().unwrap_or_default(),
            scale_paths: {
                let sc = &v["subresources"]["scale"];
                let p = |k: &str| sc[k].as_str().unwrap_or("").to_string();
                (p("specReplicasPath"), p("statusReplicasPath"), p("labelSelectorPath"))
            },
        });
    }
    out
}

/// Validation of a CRD itself, beyond its type.
pub fn validate_crd(crd: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or("");
    let plural = spec["names"]["plural"].as_str().unwrap_or("");
    let name = crd["metadata"]["name"].as_str().unwrap_or("");
    if group.is_empty() || !group.contains('.') {
        causes.push(Cause::invalid("spec.group", group, "should be a domain with at least one dot"));
    }
    // Built-in groups (and Kubernetes' own domains) are not for custom resources: a CRD there
    // could shadow a built-in resource.
    let builtin = crate::catalog::builtins().iter().any(|r| r.group == group);
    if builtin || group.ends_with(".k8s.io") || group.ends_with(".kubernetes.io") || group == "k8s.io" || group == "kubernetes.io" {
        causes.push(Cause::invalid("spec.group", group, "is a Kubernetes group; custom resources need a group of their own"));
    }
    if plural.is_empty() {
        causes.push(Cause::required("spec.names.plural"));
    }
    if spec["names"]["kind"].as_str().unwrap_or("").is_empty() {
        causes.push(Cause::required("spec.names.kind"));
    }
    if name != format!("{plural}.{group}") {
        causes.push(Cause::invalid("metadata.name", name, &format!("must be spec.names.plural+\".\"+spec.group")));
    }
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        causes.push(Cause::required("spec.versions"));
    }
    if versions.iter().filter(|v| v["storage"].as_bool() == Some(true)).count() != 1 {
        causes.push(Cause::invalid("spec.versions", "", "must have exactly one version marked as storage version"));
    }
    for (i, v) in versions.iter().enumerate() {
        if let Some(s) = v["schema"]["openAPIV3Schema"].as_object() {
            for problem in crate::crd_schema::check_structural(&Value::Object(s.clone())) {
                causes.push(Cause::invalid(format!("spec.versions[{i}].schema.openAPIV3Schema"), "", &problem));
            }
        }
    }
    causes
}

/// The status a CRD is stored with: its names accepted and the CRD established.
pub fn crd_status(crd: &Value, now: &str) -> Value {
    json!({
        "acceptedNames": crd["spec"]["names"],
        "storedVersions": crd["spec"]["versions"].as_array().map(|vs| vs.iter().filter(|v| v["storage"].as_bool() == Some(true)).map(|v| v["name"].clone()).collect::<Vec<_>>()).unwrap_or_default(),
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
        ],
    })
}

/// Table for a custom resource: Name, then the CRD's printer columns (or Age when it has none).
pub fn table(res: &ResourceDef, objs: &[Value], rv: &str, cont: Option<&str>, include_object: &str, with_headers: bool, now_unix: i64) -> Value {
    let mut cols = vec![json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0})];
    let printer: Vec<Value> = if res.printer_columns.is_empty() {
        vec![json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"})]
    } else {
        res.printer_columns.clone()
    };
    for c in &printer {
        cols.push(json!({"name": c["name"], "type": c["type"], "format": c["format"].as_str().unwrap_or(""), "description": c["description"].as_str().unwrap_or(""), "priority": c["priority"].as_i64().unwrap_or(0)}));
    }
    let rows: Vec<Value> = objs
        .iter()
        .map(|o| {
            let mut cells = vec![o["metadata"]["name"].clone()];
            for c in &printer {
                let ty = c["type"].as_str().unwrap_or("string");
                let v = crate::crd_schema::printer_cell(o, c["jsonPath"].as_str().unwrap_or(""), ty);
                cells.push(if ty == "date" { json!(crate::table::age(v.as_str(), now_unix)) } else { v });
            }
            let mut row = json!({"cells": cells});
            match include_object {
                "None" => {}
                "Object" => row["object"] = o.clone(),
                _ => row["object"] = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}),
            }
            row
        })
        .collect();
    let mut md = json!({"resourceVersion": rv});
    if let Some(c) = cont {
        md["continue"] = json!(c);
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": md, "columnDefinitions": if with_headers { json!(cols) } else { json!([]) }, "rows": rows})
}

/// Rebuilds the catalog's custom resources from the stored CRDs.
async fn refresh(api: &Api) -> anyhow::Result<i64> {
    let cat = api.catalog.get();
    let res = cat.lookup("apiextensions.k8s.io", "v1", "customresourcedefinitions").ok_or_else(|| anyhow::anyhow!("CRD resource missing"))?;
    let (start, end) = collection_range(&res, None);
    let page = api.store.list(&start, &end, Freshness::Any, 0, &|_| true).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let defs: Vec<ResourceDef> = page.items.iter().flat_map(|(v, _)| defs_from_crd(v)).collect();
    api.catalog.set_custom(defs);
    api.invalidate_openapi();
    Ok(page.revision)
}

/// Follows CRD changes for the life of the process.
pub async fn follow(api: Arc<Api>) {
    loop {
        if let Err(e) = follow_once(&api).await {
            tracing::debug!("CRD watch: {e}; restarting");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn follow_once(api: &Api) -> anyhow::Result<()> {
    let rev = refresh(api).await?;
    let cat = api.catalog.get();
    let res = cat.lookup("apiextensions.k8s.io", "v1", "customresourcedefinitions").ok_or_else(|| anyhow::anyhow!("CRD resource missing"))?;
    let (start, end) = collection_range(&res, None);
    let (out_tx, mut out_rx) = mpsc::channel::<WatchOut>(16);
    let mut ws = api.store.replica.watch_stream(out_tx);
    ws.create(WatchSpec { key: start, range_end: end, start_revision: rev + 1, ..Default::default() }).await?;
    loop {
        tokio::select! {
            h = ws.recv_hub() => ws.on_hub(h).await?,
            o = out_rx.recv() => match o {
                Some(WatchOut::Events { .. }) => { refresh(api).await?; }
                Some(WatchOut::Canceled { .. }) | Some(WatchOut::CreateFailed { .. }) | None => anyhow::bail!("watch ended"),
                Some(_) => {}
            },
        }
    }
}
