//! OpenAPI v3, generated from the served types (k8s-openapi's schemars schemas) and the catalog,
//! one document per group/version. kubectl needs it for `create/apply/replace/edit -f` (it looks
//! for a PATCH operation declaring `fieldValidation` before trusting the server to validate) and
//! for `explain`.

use std::collections::BTreeMap;

use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::catalog::{CatalogData, ResourceDef, KUBE_GIT_VERSION};

/// "api/v1" or "apis/apps/v1" for a group/version.
pub fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn gvk(r: &ResourceDef) -> Value {
    json!({"group": r.group, "version": r.version, "kind": r.kind})
}

fn param(name: &str, location: &str, required: bool) -> Value {
    json!({"name": name, "in": location, "required": required, "schema": {"type": "string", "uniqueItems": true}})
}

fn op(r: &ResourceDef, action: &str, id: &str, schema_ref: &Value, params: Vec<Value>, body: Option<Vec<&str>>) -> Value {
    let mut o = json!({
        "operationId": id,
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk(r),
        "parameters": params,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": schema_ref}}}, "401": {"description": "Unauthorized"}},
    });
    if let Some(types) = body {
        let mut content = Map::new();
        for t in types {
            content.insert(t.to_string(), json!({"schema": if t.contains("patch") { json!({"type": "object"}) } else { schema_ref.clone() }}));
        }
        o["requestBody"] = json!({"content": content, "required": true});
    }
    o
}

/// The document for one group/version, or None if nothing is served there.
pub fn document(cat: &CatalogData, group: &str, version: &str) -> Option<Value> {
    let resources: Vec<&std::sync::Arc<ResourceDef>> = cat.resources.iter().filter(|r| r.group == group && r.version == version).collect();
    if resources.is_empty() {
        return None;
    }
    let mut gen = SchemaSettings::openapi3().into_generator();
    let mut paths = BTreeMap::new();
    let mut kind_schemas: Vec<(String, Value)> = Vec::new();
    let mut custom_schemas: Vec<(String, Value)> = Vec::new();
    for r in &resources {
        let (schema_name, schema_ref) = match (&r.typed, &r.crd_schema) {
            (Some(t), _) => {
                let _ = (t.schema)(&mut gen);
                let name = (t.schema_name)();
                (name.clone(), json!({"$ref": format!("#/components/schemas/{name}")}))
            }
            (None, schema) => {
                let name = format!("{}.{}.{}", r.group.split('.').rev().collect::<Vec<_>>().join("."), r.version, r.kind);
                custom_schemas.push((name.clone(), schema.clone().unwrap_or_else(|| json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}))));
                (name.clone(), json!({"$ref": format!("#/components/schemas/{name}")}))
            }
        };
        kind_schemas.push((schema_name, gvk(r)));
        let base = format!("/{}", gv_path(group, version));
        let (coll, item) = if r.namespaced {
            (format!("{base}/namespaces/{{namespace}}/{}", r.plural), format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural))
        } else {
            (format!("{base}/{}", r.plural), format!("{base}/{}/{{name}}", r.plural))
        };
        let mut common = vec![json!({"name": "pretty", "in": "query", "schema": {"type": "string"}})];
        if r.namespaced {
            common.push(param("namespace", "path", true));
        }
        let mut item_params = common.clone();
        item_params.push(param("name", "path", true));
        let write_params = |mut p: Vec<Value>, patch: bool| {
            for q in ["dryRun", "fieldManager", "fieldValidation"] {
                p.push(json!({"name": q, "in": "query", "schema": {"type": "string"}, "uniqueItems": true}));
            }
            if patch {
                p.push(json!({"name": "force", "in": "query", "schema": {"type": "boolean"}, "uniqueItems": true}));
            }
            p
        };
        let id = |verb: &str| format!("{verb}{}{}", if r.namespaced { "Namespaced" } else { "" }, r.kind);
        // Strategic merge patch is left out of the PATCH content types on purpose: kubectl would
        // then compute apply patches from these schemas, which carry no patch-merge-key
        // extensions; without it kubectl uses its compiled-in merge keys, which are right.
        let patch_types = vec!["application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml"];
        let mut item_ops = Map::new();
        item_ops.insert("get".into(), op(r, "get", &id("read"), &schema_ref, item_params.clone(), None));
        item_ops.insert("put".into(), op(r, "put", &id("replace"), &schema_ref, write_params(item_params.clone(), false), Some(vec!["application/json", "application/yaml"])));
        item_ops.insert("patch".into(), op(r, "patch", &id("patch"), &schema_ref, write_params(item_params.clone(), true), Some(patch_types)));
        item_ops.insert("delete".into(), op(r, "delete", &id("delete"), &json!({"type": "object"}), item_params.clone(), None));
        paths.insert(item, Value::Object(item_ops));
        let mut coll_ops = Map::new();
        coll_ops.insert("get".into(), op(r, "list", &id("list"), &json!({"type": "object"}), common.clone(), None));
        coll_ops.insert("post".into(), op(r, "post", &id("create"), &schema_ref, write_params(common.clone(), false), Some(vec!["application/json", "application/yaml"])));
        coll_ops.insert("delete".into(), op(r, "deletecollection", &id("deleteCollectionOf"), &json!({"type": "object"}), common.clone(), None));
        paths.insert(coll, Value::Object(coll_ops));
        for s in &r.subresources {
            if s.name == "status" || s.name == "scale" {
                let p = format!("{}/{}", paths.keys().rev().nth(1).cloned().unwrap_or_default(), s.name);
                let _ = p;
            }
        }
    }
    let mut schemas: Map<String, Value> = gen.take_definitions(true).into_iter().collect();
    for (name, s) in custom_schemas {
        schemas.insert(name, s);
    }
    for (name, g) in kind_schemas {
        if let Some(s) = schemas.get_mut(&name).and_then(Value::as_object_mut) {
            s.insert("x-kubernetes-group-version-kind".into(), json!([g]));
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": KUBE_GIT_VERSION},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

pub fn hash(doc: &[u8]) -> String {
    let d = Sha256::digest(doc);
    d.iter().take(32).map(|b| format!("{b:02X}")).collect()
}

/// The root: every group/version with the URL (and hash) of its document.
pub fn root(docs: &[(String, String)]) -> Value {
    let mut paths = Map::new();
    for (gv, h) in docs {
        paths.insert(gv.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{gv}?hash={h}")}));
    }
    json!({"paths": paths})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    #[test]
    fn each_kind_has_a_patch_operation_with_field_validation_and_a_gvk_schema() {
        let cat = Catalog::new().get();
        let doc = document(&cat, "apps", "v1").expect("apps/v1");
        let p = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(p["x-kubernetes-group-version-kind"]["kind"], "Deployment");
        assert!(p["parameters"].as_array().map(|a| a.iter().any(|q| q["name"] == "fieldValidation")).unwrap_or(false));
        let s = &doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(s["x-kubernetes-group-version-kind"][0]["kind"], "Deployment");
        // References resolve inside the document.
        assert!(doc["components"]["schemas"]["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"].is_object());
        let text = doc.to_string();
        assert!(!text.contains("#/$defs/"), "refs must point at components/schemas");
    }
}
