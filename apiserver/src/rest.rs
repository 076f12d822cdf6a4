//! The generic registry: create, get, list, watch, update, patch, delete and deletecollection
//! for every resource, plus the status and scale subresources. Kind-specific rules come from
//! strategy.rs; storage from store.rs.

use std::sync::Arc;

use base64::Engine;
use serde_json::{json, Map, Value};

use crate::catalog::ResourceDef;
use crate::error::{ApiError, ApiResult, Cause};
use crate::request::{decode_body, duplicate_fields, Reply, Request};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::store::{collection_range, object_key, Freshness, Written};
use raftstore::types::KeyValue;
use crate::strategy;
use crate::Api;

/// Where a request points: a collection (name None) or one object, maybe a subresource.
#[derive(Clone, Debug)]
pub struct Target {
    pub res: Arc<ResourceDef>,
    pub ns: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
}

impl Target {
    pub fn key(&self) -> Vec<u8> {
        object_key(&self.res, self.ns.as_deref(), self.name.as_deref().unwrap_or(""))
    }
    fn not_found(&self) -> ApiError {
        ApiError::NotFound { gr: self.res.gr(), name: self.name.clone().unwrap_or_default() }
    }
    fn conflict(&self, reason: &str) -> ApiError {
        ApiError::Conflict { gr: self.res.gr(), name: self.name.clone().unwrap_or_default(), reason: reason.into() }
    }
}

const MODIFIED: &str = "the object has been modified; please apply your changes to the latest version and try again";
/// Retries of an unconditional write that lost a compare-and-swap race.
const MAX_RETRIES: usize = 16;

pub fn now_rfc3339() -> String {
    let now = jiff::Timestamp::now();
    jiff::Timestamp::from_second(now.as_second()).map(|t| t.to_string()).unwrap_or_else(|_| now.to_string())
}

pub fn now_unix() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn rfc3339_in(secs: i64) -> String {
    jiff::Timestamp::from_second(now_unix() + secs).map(|t| t.to_string()).unwrap_or_else(|_| now_rfc3339())
}

fn parse_rv(s: &str) -> ApiResult<i64> {
    s.parse::<i64>().ok().filter(|v| *v >= 0).ok_or_else(|| ApiError::BadRequest(format!("invalid resource version: {s:?}: must be a non-negative integer")))
}

pub fn meta(v: &Value) -> &Value {
    &v["metadata"]
}

fn meta_mut(v: &mut Value) -> &mut Map<String, Value> {
    if !v["metadata"].is_object() {
        v["metadata"] = json!({});
    }
    v["metadata"].as_object_mut().expect("just set")
}

fn is_dry_run(req: &Request) -> ApiResult<bool> {
    match req.query.all("dryRun").as_slice() {
        [] => Ok(false),
        ["All"] => Ok(true),
        [other, ..] => Err(ApiError::BadRequest(format!("Invalid dry run value: \"{other}\" (supported: \"All\")"))),
    }
}

/// fieldValidation: Strict refuses unknown and duplicate fields, Warn (the default) reports them
/// in Warning headers, Ignore drops them silently.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Validation {
    Strict,
    Warn,
    Ignore,
}

fn validation(req: &Request) -> ApiResult<Validation> {
    match req.query.get("fieldValidation") {
        None | Some("") | Some("Warn") => Ok(Validation::Warn),
        Some("Strict") => Ok(Validation::Strict),
        Some("Ignore") => Ok(Validation::Ignore),
        Some(o) => Err(ApiError::BadRequest(format!("fieldValidation parameter unsupported: {o:?}"))),
    }
}

/// Fields of `raw` that the typed round trip dropped: unknown to the schema.
fn unknown_fields(raw: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (raw, typed) {
        (Value::Object(r), Value::Object(t)) => {
            for (k, v) in r {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match t.get(k) {
                    None if !v.is_null() => out.push(p),
                    Some(tv) => unknown_fields(v, tv, &p, out),
                    None => {}
                }
            }
        }
        (Value::Array(r), Value::Array(t)) => {
            for (i, (rv, tv)) in r.iter().zip(t.iter()).enumerate() {
                unknown_fields(rv, tv, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// A JSON list written from items already encoded.
fn raw_list(kind: &str, api_version: &str, page: crate::store::ScanPage<Vec<u8>>) -> Reply {
    let mut md = json!({"resourceVersion": page.revision.to_string()});
    if let Some(k) = &page.next_key {
        md["continue"] = json!(encode_continue(page.revision, k));
    }
    let total: usize = page.items.iter().map(|i| i.len() + 1).sum();
    let mut body = Vec::with_capacity(total + 256);
    body.extend_from_slice(format!("{{\"kind\":{},\"apiVersion\":{},\"metadata\":{md},\"items\":[", json!(kind), json!(api_version)).as_bytes());
    for (i, item) in page.items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item);
    }
    body.extend_from_slice(b"]}");
    Reply::Raw { code: 200, content_type: "application/json", body: bytes::Bytes::from(body), headers: Default::default() }
}

/// `typed_check` of an object made from `old` (stored, so checked when it was written): only
/// the top-level fields that differ from it are decoded (a status patch does not decode the
/// spec). Each top-level field of a built-in type decodes on its own; a type whose unchanged
/// fields are required (a RoleBinding's roleRef, say) fails that partial decode and gets the
/// full check, which is the answer either way.
fn typed_check_changes(res: &ResourceDef, old: &Value, mut obj: Value, mode: Validation) -> ApiResult<(Value, Vec<String>)> {
    const TYPE: [&str; 2] = ["apiVersion", "kind"];
    let (Some(_), Some(om), Some(m)) = (res.typed, old.as_object(), obj.as_object()) else { return typed_check(res, obj, None, mode) };
    let part: serde_json::Map<String, Value> = m.iter().filter(|(k, v)| TYPE.contains(&k.as_str()) || om.get(*k) != Some(*v)).map(|(k, v)| (k.clone(), v.clone())).collect();
    let mut changed: Vec<String> = part.keys().cloned().collect();
    // apiVersion and kind come back even when absent (the check fills them in).
    changed.extend(TYPE.iter().filter(|t| !part.contains_key(**t)).map(|t| t.to_string()));
    let Ok((Value::Object(mut checked), warnings)) = typed_check(res, Value::Object(part), None, mode) else { return typed_check(res, obj, None, mode) };
    let Some(m) = obj.as_object_mut() else { return typed_check(res, obj, None, mode) };
    // What the check dropped (unknown fields) goes; what it did not look at is old's.
    for k in changed {
        match checked.remove(&k) {
            Some(v) => {
                m.insert(k, v);
            }
            None => {
                m.remove(&k);
            }
        }
    }
    Ok((obj, warnings))
}

/// A status write: `new` keeps its status (and managedFields, if it has them) and everything
/// else as `old` has it. Fields are compared before they are copied: they rarely differ.
fn keep_all_but_status(old: &Value, new: &mut Value) {
    let (Some(om), Some(nm)) = (old.as_object(), new.as_object_mut()) else {
        let status = new.get("status").cloned();
        *new = old.clone();
        match (status, new.as_object_mut()) {
            (Some(s), Some(m)) => {
                m.insert("status".into(), s);
            }
            (None, Some(m)) => {
                m.remove("status");
            }
            _ => {}
        }
        return;
    };
    let mf = nm.get_mut("metadata").and_then(Value::as_object_mut).and_then(|m| m.remove("managedFields")).filter(|v| !v.is_null());
    nm.retain(|k, _| k == "status" || om.contains_key(k));
    for (k, ov) in om.iter().filter(|(k, _)| *k != "status") {
        match nm.get_mut(k) {
            Some(nv) if nv == ov => {}
            Some(nv) => *nv = ov.clone(),
            None => {
                nm.insert(k.clone(), ov.clone());
            }
        }
    }
    if let Some(mf) = mf {
        meta_mut(new).insert("managedFields".into(), mf);
    }
}

/// Checks apiVersion/kind, then decodes into the kind's type (normalizing it) and applies
/// fieldValidation. Returns the normalized object and warnings.
fn typed_check(res: &ResourceDef, mut obj: Value, raw_body: Option<&[u8]>, mode: Validation) -> ApiResult<(Value, Vec<String>)> {
    let Some(m) = obj.as_object_mut() else {
        return Err(ApiError::BadRequest(format!("the body of the request is not a {} object", res.kind)));
    };
    let api_version = res.api_version();
    match m.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => {
            m.insert("apiVersion".into(), json!(api_version));
        }
        Some(v) if v == api_version => {}
        Some(v) => return Err(ApiError::BadRequest(format!("the API version in the data ({v}) does not match the expected API version ({api_version})"))),
    }
    match m.get("kind").and_then(Value::as_str) {
        None | Some("") => {
            m.insert("kind".into(), json!(res.kind));
        }
        Some(k) if k == res.kind => {}
        Some(k) => return Err(ApiError::BadRequest(format!("the kind in the data ({k}) does not match the expected kind ({})", res.kind))),
    }
    let Some(typed) = res.typed else {
        // A custom resource: its CRD schema prunes unknown fields and supplies defaults.
        let Some(schema) = &res.crd_schema else { return Ok((obj, vec![])) };
        let mut unknown = crate::crd_schema::prune(schema, &mut obj);
        unknown.retain(|f| !f.starts_with("metadata"));
        crate::crd_schema::apply_defaults(schema, &mut obj);
        return match mode {
            Validation::Strict if !unknown.is_empty() => {
                let errs: Vec<String> = unknown.iter().map(|f| format!("unknown field \"{f}\"")).collect();
                Err(ApiError::BadRequest(format!("{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}", res.kind, res.version, res.kind, errs.join(", "))))
            }
            Validation::Warn => Ok((obj, unknown.iter().map(|f| format!("unknown field \"{f}\"")).collect())),
            _ => Ok((obj, vec![])),
        };
    };
    let cannot = |e: String| ApiError::BadRequest(format!("{} in version \"{}\" cannot be handled as a {}: {e}", res.kind, res.version, res.kind));
    let normalized = (typed.normalize)(&obj).map_err(cannot)?;
    let mut unknown = Vec::new();
    if mode != Validation::Ignore {
        unknown_fields(&obj, &normalized, "", &mut unknown);
    }
    let dups = if mode == Validation::Strict { raw_body.map(duplicate_fields).unwrap_or_default() } else { vec![] };
    match mode {
        Validation::Strict if !unknown.is_empty() || !dups.is_empty() => {
            let mut errs: Vec<String> = unknown.iter().map(|f| format!("unknown field \"{f}\"")).collect();
            errs.extend(dups.iter().map(|f| format!("duplicate field \"{f}\"")));
            Err(cannot(format!("strict decoding error: {}", errs.join(", "))))
        }
        Validation::Warn => Ok((normalized, unknown.iter().map(|f| format!("unknown field \"{f}\"")).collect())),
        _ => Ok((normalized, vec![])),
    }
}

/// The field manager of a write: the fieldManager parameter, else the client's name from its
/// User-Agent ("kubectl/v1.33.1 (linux/amd64) ..." -> "kubectl"), as Kubernetes does.
pub fn field_manager(req: &Request) -> String {
    match req.query.get("fieldManager") {
        Some(m) if !m.is_empty() => m.to_string(),
        _ => req.header("user-agent").and_then(|ua| ua.split('/').next()).map(str::trim).filter(|s| !s.is_empty()).unwrap_or("unknown").to_string(),
    }
}

/// Five characters for generateName (and other generated names).
pub fn random_suffix() -> String {
    use rand::Rng;
    // The alphabet Kubernetes uses for generateName (no vowels, no look-alikes).
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut r = rand::rng();
    (0..5).map(|_| ALPHA[r.random_range(0..ALPHA.len())] as char).collect()
}

impl Api {
    fn gone(&self, rv: i64) -> ApiError {
        let compacted = self.store.replica.status().compact_revision;
        ApiError::Gone(format!("too old resource version: {rv} ({compacted})"))
    }

    // ------------------------------------------------------------------ reads

    pub async fn get(&self, req: &Request, t: &Target) -> ApiResult<Reply> {
        let fresh = match req.query.get("resourceVersion") {
            None | Some("") => Freshness::Latest,
            Some("0") => Freshness::Any,
            Some(rv) => Freshness::NotOlderThan(parse_rv(rv)?),
        };
        if req.wants_metadata() && !req.wants_table() {
            let (obj, kv) = self.store.get_shared(&t.key(), fresh).await?.ok_or_else(|| t.not_found())?;
            let body = serde_json::to_vec(&crate::decoded::Partial { obj: &obj, rv: Some(kv.mod_revision) }).map_err(|e| ApiError::Internal(e.to_string()))?;
            return Ok(Reply::Raw { code: 200, content_type: "application/json", body: bytes::Bytes::from(body), headers: Default::default() });
        }
        let (obj, _) = self.store.get(&t.key(), fresh).await?.ok_or_else(|| t.not_found())?;
        if req.wants_table() {
            let rv = meta(&obj)["resourceVersion"].as_str().unwrap_or("").to_string();
            return Ok(Reply::ok(table_of(&t.res, &[obj], &rv, None, req.query.get("includeObject").unwrap_or("Metadata"), true)));
        }
        Ok(Reply::ok(obj))
    }

    /// The list/watch filter: label and field selectors.
    pub fn filter(&self, req: &Request, res: &ResourceDef) -> ApiResult<(LabelSelector, FieldSelector)> {
        let ls = LabelSelector::parse(req.query.get("labelSelector").unwrap_or("")).map_err(|e| ApiError::BadRequest(format!("unable to parse requirement: {e}")))?;
        let fs = FieldSelector::parse(req.query.get("fieldSelector").unwrap_or("")).map_err(ApiError::BadRequest)?;
        fs.check_supported(strategy::selectable_fields(res)).map_err(ApiError::BadRequest)?;
        Ok((ls, fs))
    }

    pub async fn list(&self, req: &Request, t: &Target) -> ApiResult<Reply> {
        if req.query.flag("watch") {
            return self.watch(req, t).await;
        }
        let (ls, fs) = self.filter(req, &t.res)?;
        let limit = req.query.int("limit")?.unwrap_or(0).max(0) as usize;
        let rv = req.query.get("resourceVersion").unwrap_or("");
        let rvm = req.query.get("resourceVersionMatch").unwrap_or("");
        let cont = req.query.get("continue").unwrap_or("");
        if req.query.get("sendInitialEvents").is_some() {
            return Err(ApiError::invalid("ListOptions", "meta.k8s.io", "", vec![Cause::forbidden("sendInitialEvents", "sendInitialEvents is forbidden for list")]));
        }
        if !rvm.is_empty() && (rv.is_empty() || !cont.is_empty()) {
            return Err(ApiError::invalid("ListOptions", "meta.k8s.io", "", vec![Cause::forbidden("resourceVersionMatch", "resourceVersionMatch is forbidden unless resourceVersion is provided")]));
        }
        let (mut start, end) = collection_range(&t.res, t.ns.as_deref());
        let fresh = if !cont.is_empty() {
            let (crv, key) = decode_continue(cont)?;
            if !key.starts_with(&start) {
                return Err(ApiError::BadRequest("continue key is not valid for this collection".into()));
            }
            start = key;
            Freshness::Exact(crv)
        } else {
            match (rv, rvm) {
                ("", _) => Freshness::Latest,
                ("0", "") | ("0", "NotOlderThan") => Freshness::Any,
                (rv, "" | "NotOlderThan") => Freshness::NotOlderThan(parse_rv(rv)?),
                (rv, "Exact") => Freshness::Exact(parse_rv(rv)?),
                (_, other) => return Err(ApiError::BadRequest(format!("unsupported resourceVersionMatch value {other:?}"))),
            }
        };
        let gone = |e: ApiError| match e {
            ApiError::Gone(_) => match fresh {
                Freshness::Exact(r) if cont.is_empty() => self.gone(r),
                _ => ApiError::Gone("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.".into()),
            },
            other => other,
        };
        let include = req.query.get("includeObject").unwrap_or("Metadata").to_string();
        if req.wants_table() {
            let keep = |v: &Value| ls.matches_object(v) && fs.matches(v);
            let page = self.store.list(&start, &end, fresh, limit, &keep).await.map_err(gone)?;
            let rv = page.revision.to_string();
            let cont = page.next_key.as_ref().map(|k| encode_continue(page.revision, k));
            let items: Vec<Value> = page.items.into_iter().map(|(v, _)| v).collect();
            return Ok(Reply::ok(table_of(&t.res, &items, &rv, cont.as_deref(), &include, true)));
        }
        if req.wants_metadata() {
            let pick = |kv: &KeyValue| -> ApiResult<Option<Vec<u8>>> {
                let obj = crate::decoded::object(kv)?;
                if !(ls.matches_object(&obj) && fs.matches(&obj)) {
                    return Ok(None);
                }
                serde_json::to_vec(&crate::decoded::Partial { obj: &obj, rv: Some(kv.mod_revision) }).map(Some).map_err(|e| ApiError::Internal(e.to_string()))
            };
            let page = self.store.scan(&start, &end, fresh, limit, &pick).await.map_err(gone)?;
            return Ok(raw_list("PartialObjectMetadataList", "meta.k8s.io/v1", page));
        }
        // The JSON list is written from the stored bytes: objects are decoded only as far as
        // the selectors need (labels and names from a light decode, other fields in full).
        let metadata_only = fs.check_supported(&[]).is_ok();
        let pick = |kv: &KeyValue| -> ApiResult<Option<Vec<u8>>> {
            let keep = if ls.is_empty() && fs.is_empty() {
                true
            } else if metadata_only {
                let light: LightObject = serde_json::from_slice(&kv.value).map_err(|e| ApiError::Internal(format!("stored object is not JSON: {e}")))?;
                let v = json!({"metadata": {"name": light.metadata.name, "namespace": light.metadata.namespace, "labels": light.metadata.labels}});
                ls.matches_object(&v) && fs.matches(&v)
            } else {
                let v = crate::store::decode(kv)?;
                ls.matches_object(&v) && fs.matches(&v)
            };
            if keep {
                crate::store::raw_with_rv(kv).map(Some)
            } else {
                Ok(None)
            }
        };
        let page = self.store.scan(&start, &end, fresh, limit, &pick).await.map_err(gone)?;
        Ok(raw_list(&t.res.list_kind, &t.res.api_version(), page))
    }

    // ------------------------------------------------------------------ create

    /// Namespaced creates need a namespace that exists and is not being deleted.
    async fn check_namespace(&self, ns: &str) -> ApiResult<()> {
        let cat = self.catalog.get();
        let Some(nsres) = cat.lookup("", "v1", "namespaces") else { return Ok(()) };
        // The local state first (cheap); a miss may only mean this replica lags behind a
        // namespace just created through another one, so confirm it with a linearizable read.
        let key = object_key(&nsres, None, ns);
        let found = match self.store.get_shared(&key, Freshness::Any).await? {
            Some(x) => Some(x),
            None => self.store.get_shared(&key, Freshness::Latest).await?,
        };
        match found {
            None => Err(ApiError::NotFound { gr: nsres.gr(), name: ns.into() }),
            Some((obj, _)) if obj["status"]["phase"] == "Terminating" => Err(ApiError::Forbidden {
                message: format!("unable to create new content in namespace {ns} because it is being terminated"),
                gr: nsres.gr(),
                name: ns.into(),
            }),
            Some(_) => Ok(()),
        }
    }

    /// Everything a create does before writing: validation, server-owned metadata, defaults.
    pub fn prepare_create(&self, req: &Request, t: &Target, obj: Value, raw: Option<&[u8]>, mode_override: Option<&str>) -> ApiResult<(Value, Vec<String>)> {
        let mode = match mode_override {
            Some(_) => Validation::Ignore,
            None => validation(req)?,
        };
        let (mut obj, warnings) = typed_check(&t.res, obj, raw, mode)?;
        let res = &t.res;
        {
            let m = meta_mut(&mut obj);
            if m.get("resourceVersion").and_then(Value::as_str).map(|s| !s.is_empty()).unwrap_or(false) {
                return Err(ApiError::BadRequest("resourceVersion should not be set on objects to be created".into()));
            }
            if res.namespaced {
                let url_ns = t.ns.clone().unwrap_or_default();
                match m.get("namespace").and_then(Value::as_str) {
                    None | Some("") => {
                        m.insert("namespace".into(), json!(url_ns));
                    }
                    Some(n) if n == url_ns => {}
                    Some(_) => return Err(ApiError::BadRequest("the namespace of the provided object does not match the namespace sent on the request".into())),
                }
            } else {
                m.remove("namespace");
            }
            let name = m.get("name").and_then(Value::as_str).unwrap_or("").to_string();
            if name.is_empty() {
                match m.get("generateName").and_then(Value::as_str).filter(|g| !g.is_empty()) {
                    Some(g) => {
                        let n = format!("{g}{}", random_suffix());
                        m.insert("name".into(), json!(n));
                    }
                    None => return Err(ApiError::invalid(&res.kind, &res.group, "", vec![Cause::required("metadata.name")])),
                }
            }
            m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            m.insert("creationTimestamp".into(), json!(now_rfc3339()));
            m.remove("deletionTimestamp");
            m.remove("deletionGracePeriodSeconds");
            m.remove("generation");
            m.remove("selfLink");
        }
        let name = meta(&obj)["name"].as_str().unwrap_or("").to_string();
        if let Some(c) = strategy::validate_name(res, &name) {
            return Err(ApiError::invalid(&res.kind, &res.group, &name, vec![c]));
        }
        if strategy::tracks_generation(res) {
            meta_mut(&mut obj).insert("generation".into(), json!(1));
        }
        if res.has_sub("status") {
            match strategy::initial_status(res, &obj) {
                Some(s) => obj["status"] = s,
                None => {}
            }
        }
        strategy::apply_defaults(res, &mut obj);
        if res.group == "batch" && res.kind == "Job" {
            if let Some(c) = strategy::generate_job_selector(&mut obj) {
                return Err(ApiError::invalid(&res.kind, &res.group, &name, vec![c]));
            }
        }
        if res.group == "apiextensions.k8s.io" && res.kind == "CustomResourceDefinition" {
            obj["status"] = crate::crd::crd_status(&obj, &now_rfc3339());
        }
        if res.kind == "Pod" && res.group.is_empty() {
            obj["status"]["qosClass"] = json!(strategy::qos_class(&obj));
        }
        let causes = strategy::validate(res, &obj);
        if !causes.is_empty() {
            return Err(ApiError::invalid(&res.kind, &res.group, &name, causes));
        }
        Ok((obj, warnings))
    }

    pub async fn create(&self, req: &Request, t: &Target) -> ApiResult<Reply> {
        let body = decode_body(req)?;
        let dry = is_dry_run(req)?;
        let (obj, warnings) = self.prepare_create(req, t, body, Some(&req.body), None)?;
        crate::node_authz::admit_node_create(&req.user, &t.res, &obj)?;
        crate::server::check_escalation(self, &req.user, &t.res, &obj).await?;
        let manager = field_manager(req);
        let obj = crate::managed::track_update_owned(&t.res.kind, None, obj, &manager, &t.res.api_version(), "", &now_rfc3339());
        let stored = self.create_object(t, obj, dry).await?;
        Ok(Reply::code(201, stored).with_warnings(warnings))
    }

    /// Writes a prepared new object. Shared by POST and server-side apply of a missing object.
    /// Admission (LimitRange, ResourceQuota) and allocation run here, again on every retry.
    pub async fn create_object(&self, t: &Target, obj: Value, dry: bool) -> ApiResult<Value> {
        let name = meta(&obj)["name"].as_str().unwrap_or("").to_string();
        if t.res.namespaced {
            let ns = meta(&obj)["namespace"].as_str().unwrap_or("").to_string();
            self.check_namespace(&ns).await?;
        }
        let target = Target { name: Some(name.clone()), ..t.clone() };
        for _ in 0..MAX_RETRIES {
            let mut obj = obj.clone();
            self.admit_service_account(&target, &mut obj).await?;
            self.admit_limit_ranges(&target, &mut obj).await?;
            self.admit_priority(&target, &mut obj).await?;
            self.admit_default_tolerations(&target, &mut obj);
            self.admit_default_storage_class(&target, &mut obj).await?;
            let mut guards = self.admit_quota(&target, &obj).await?;
            guards.extend(fence_guard(&t.res, &obj));
            let extra = self.allocate(&target, &mut obj, dry).await?;
            if dry {
                return Ok(obj);
            }
            match self.store.create(&target.key(), &obj, extra, guards).await? {
                crate::store::Created::Done(rev) => {
                    crate::store::set_rv(&mut obj, rev);
                    return Ok(obj);
                }
                crate::store::Created::Exists => return Err(ApiError::AlreadyExists { gr: t.res.gr(), name }),
                crate::store::Created::Raced => continue,
            }
        }
        Err(ApiError::Timeout(format!("could not create {} \"{name}\": too many concurrent changes to its quota or allocations", t.res.gr())))
    }

    /// Allocations that must be unique cluster-wide (Service ClusterIPs and NodePorts): returned
    /// as keys created in the same transaction as the object, so a duplicate cannot commit.
    async fn allocate(&self, t: &Target, obj: &mut Value, _dry: bool) -> ApiResult<Vec<(Vec<u8>, Vec<u8>)>> {
        if !(t.res.group.is_empty() && t.res.kind == "Service") {
            return Ok(vec![]);
        }
        crate::alloc::allocate_service(self, t, obj).await
    }

    // ------------------------------------------------------------------ update

    /// Applies the update rules to `new` given the stored `old`: server-owned metadata is kept,
    /// subresource scoping, defaults, validation, generation.
    fn prepare_update(&self, t: &Target, old: &Value, mut new: Value, sub: Option<&str>) -> ApiResult<Value> {
        let res = &t.res;
        let name = t.name.clone().unwrap_or_default();
        if !new.is_object() {
            return Err(ApiError::BadRequest(format!("the body of the request is not a {} object", res.kind)));
        }
        {
            let om = meta(old);
            let m = meta_mut(&mut new);
            match m.get("name").and_then(Value::as_str) {
                None | Some("") => {
                    m.insert("name".into(), json!(name));
                }
                Some(n) if n == name => {}
                Some(_) => return Err(ApiError::BadRequest("the name of the object does not match the name on the URL".into())),
            }
            if res.namespaced {
                match m.get("namespace").and_then(Value::as_str) {
                    None | Some("") => {
                        m.insert("namespace".into(), om["namespace"].clone());
                    }
                    Some(n) if Some(n) == om["namespace"].as_str() => {}
                    Some(_) => return Err(ApiError::BadRequest("the namespace of the provided object does not match the namespace sent on the request".into())),
                }
            }
            if let Some(uid) = m.get("uid").and_then(Value::as_str) {
                if !uid.is_empty() && Some(uid) != om["uid"].as_str() {
                    return Err(t.conflict(&format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {}", om["uid"].as_str().unwrap_or(""))));
                }
            }
            for k in ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"] {
                match om.get(k) {
                    Some(v) => m.insert(k.into(), v.clone()),
                    None => m.remove(k),
                };
            }
            if m.get("managedFields").map(|v| v.is_null() || v.as_array().map(|a| a.is_empty()).unwrap_or(false)).unwrap_or(true) {
                if let Some(mf) = om.get("managedFields") {
                    m.insert("managedFields".into(), mf.clone());
                }
            }
            // No new finalizers once deletion started.
            if om.get("deletionTimestamp").is_some() {
                let old_f: Vec<&Value> = om["finalizers"].as_array().map(|a| a.iter().collect()).unwrap_or_default();
                if let Some(nf) = m.get("finalizers").and_then(Value::as_array) {
                    if nf.iter().any(|f| !old_f.contains(&f)) {
                        return Err(ApiError::invalid(&res.kind, &res.group, &name, vec![Cause::forbidden("metadata.finalizers", "no new finalizers can be added if the object is being deleted")]));
                    }
                }
            }
        }
        match sub {
            // pods/binding: the server's own change of spec.nodeName and the PodScheduled
            // condition, one write as upstream's assignPod makes it.
            Some(BINDING) => {}
            // Only status changes; everything else stays as stored.
            Some("status") => keep_all_but_status(old, &mut new),
            _ => {
                if res.has_sub("status") {
                    match old.get("status") {
                        Some(s) => new["status"] = s.clone(),
                        None => {
                            if let Some(m) = new.as_object_mut() {
                                m.remove("status");
                            }
                        }
                    }
                }
            }
        }
        strategy::apply_defaults(res, &mut new);
        if res.group.is_empty() && res.kind == "Service" {
            strategy::keep_service_allocations(old, &mut new);
        }
        if res.group == "apiextensions.k8s.io" && res.kind == "CustomResourceDefinition" && sub.is_none() {
            let accepted = new["spec"]["names"].clone();
            if old["status"]["acceptedNames"] != accepted || old["spec"]["versions"] != new["spec"]["versions"] {
                new["status"] = crate::crd::crd_status(&new, &now_rfc3339());
            }
        }
        let mut causes = strategy::validate(res, &new);
        // A status write keeps everything but status from the stored object, and no
        // immutable field lives under status.
        if sub != Some("status") {
            causes.extend(strategy::immutable_fields(res, old, &new));
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(&res.kind, &res.group, &name, causes));
        }
        if strategy::tracks_generation(res) && strategy::spec_differs(old, &new) {
            let g = meta(old)["generation"].as_i64().unwrap_or(0) + 1;
            meta_mut(&mut new).insert("generation".into(), json!(g));
        }
        Ok(new)
    }

    /// Writes `new` over `old` (CAS on `rev`). Finishes a deletion whose last finalizer went.
    /// Ok(None) = lost the race.
    async fn write_update(&self, t: &Target, old: &Arc<Value>, rev: i64, new: Value, dry: bool) -> ApiResult<Option<Written>> {
        if same_but_versions(old, &new) {
            // Nothing changed: no write, same resourceVersion (as Kubernetes does).
            return Ok(Some(Written { obj: old.clone(), rv: rev }));
        }
        let finalizers_empty = meta(&new)["finalizers"].as_array().map(|a| a.is_empty()).unwrap_or(true);
        if dry {
            return Ok(Some(Written { obj: Arc::new(new), rv: rev }));
        }
        if meta(&new).get("deletionTimestamp").is_some() && finalizers_empty && self.graceful_done(t, &new) && !spec_finalizers_block(&t.res, &new) {
            let mut extra = self.owned_release_keys(t, old).await?;
            extra.extend(fence_guard(&t.res, old).map(|g| g.key));
            return Ok(self.store.delete(&t.key(), rev, extra).await?.map(|drev| Written { obj: Arc::new(new), rv: drev }));
        }
        let guards = fence_guard(&t.res, &new).into_iter().collect();
        self.store.update_owned(&t.key(), rev, new, guards).await
    }

    /// A pod in graceful deletion stays until its node confirms (grace 0) or the grace is over.
    fn graceful_done(&self, t: &Target, obj: &Value) -> bool {
        if !(t.res.group.is_empty() && t.res.kind == "Pod") {
            return true;
        }
        meta(obj)["deletionGracePeriodSeconds"].as_i64().unwrap_or(0) == 0
    }

    pub async fn update(&self, req: &Request, t: &Target) -> ApiResult<Reply> {
        let body = decode_body(req)?;
        let dry = is_dry_run(req)?;
        if t.sub.as_deref() == Some("scale") {
            return self.update_scale(req, t, body, dry).await;
        }
        let mode = validation(req)?;
        let (body, warnings) = typed_check(&t.res, body, Some(&req.body), mode)?;
        let precondition = match meta(&body)["resourceVersion"].as_str() {
            Some(s) if !s.is_empty() => Some(parse_rv(s)?),
            _ => None,
        };
        let sub = t.sub.clone();
        let (obj, code) = self
            .guaranteed_update_pinned(req, t, sub.as_deref(), dry, precondition, |_old| Ok(body.clone()))
            .await?;
        Ok(Reply::object(code, obj).with_warnings(warnings))
    }

    /// Read-modify-write with compare-and-swap (Kubernetes' GuaranteedUpdate). `change` gets
    /// the current object and returns the new one; it runs again if another writer got in
    /// between, unless the caller pinned a resourceVersion (then that is a 409).
    pub async fn guaranteed_update_pinned<F>(&self, req: &Request, t: &Target, sub: Option<&str>, dry: bool, precondition: Option<i64>, mut change: F) -> ApiResult<(Written, u16)>
    where
        F: FnMut(&Value) -> ApiResult<Value>,
    {
        let key = t.key();
        let manager = field_manager(req);
        for _ in 0..MAX_RETRIES {
            // `old` is the object as stored, without its resourceVersion (kv.mod_revision).
            let (shared, kv) = self.store.get_shared(&key, Freshness::Latest).await?.ok_or_else(|| t.not_found())?;
            let old = &*shared;
            if let Some(p) = precondition {
                if p != kv.mod_revision {
                    return Err(t.conflict(MODIFIED));
                }
            }
            let candidate = change(old)?;
            let new = self.prepare_update(t, old, candidate, sub)?;
            crate::server::check_escalation(self, &req.user, &t.res, &new).await?;
            // A binding is not the pod's writer: upstream leaves its managedFields alone.
            let new = if sub == Some(BINDING) { new } else { crate::managed::track_update_owned(&t.res.kind, Some(old), new, &manager, &t.res.api_version(), sub.unwrap_or(""), &now_rfc3339()) };
            if let Some(v) = self.write_update(t, &shared, kv.mod_revision, new, dry).await? {
                return Ok((v, 200));
            }
            if precondition.is_some() {
                return Err(t.conflict(MODIFIED));
            }
        }
        Err(t.conflict(MODIFIED))
    }

    // ------------------------------------------------------------------ patch

    pub async fn patch(&self, req: &Request, t: &Target) -> ApiResult<Reply> {
        let ct = req.content_type();
        let dry = is_dry_run(req)?;
        let kind = t.res.kind.clone();
        let custom = t.res.typed.is_none();
        let patch: Value = match ct.as_str() {
            "application/json-patch+json" | "application/merge-patch+json" | "application/strategic-merge-patch+json" | "application/apply-patch+yaml" => decode_body(req)?,
            _ => {
                return Err(ApiError::UnsupportedMediaType(format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml{}",
                    if custom { "" } else { ", application/strategic-merge-patch+json" }
                )))
            }
        };
        if ct == "application/strategic-merge-patch+json" && custom {
            return Err(ApiError::UnsupportedMediaType(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
            )));
        }
        if ct == "application/apply-patch+yaml" {
            return self.apply(req, t, patch, dry).await;
        }
        if t.sub.as_deref() == Some("scale") {
            return self.patch_scale(req, t, &ct, patch, dry).await;
        }
        let mode = validation(req)?;
        let precondition = match patch.get("metadata").and_then(|m| m.get("resourceVersion")).and_then(Value::as_str) {
            Some(s) if !s.is_empty() => Some(parse_rv(s)?),
            _ => None,
        };
        let res = t.res.clone();
        let warnings = std::sync::Mutex::new(Vec::new());
        let sub = t.sub.clone();
        let (obj, code) = self
            .guaranteed_update_pinned(req, t, sub.as_deref(), dry, precondition, |old| {
                let mut cur = old.clone();
                // The stored RV must not leak into the patched result as a precondition.
                if let Some(m) = cur.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("resourceVersion");
                }
                let applied = match ct.as_str() {
                    "application/json-patch+json" => crate::patch::json_patch(&mut cur, &patch),
                    "application/merge-patch+json" => {
                        crate::patch::merge_patch(&mut cur, &patch);
                        Ok(())
                    }
                    _ => crate::patch::strategic_merge_patch(&kind, &mut cur, &patch),
                };
                applied.map_err(|e| match e {
                    crate::patch::PatchError::Malformed(m) => ApiError::BadRequest(m),
                    crate::patch::PatchError::Failed(m) => ApiError::invalid(&res.kind, &res.group, t.name.as_deref().unwrap_or(""), vec![Cause { reason: "FieldValueInvalid", field: String::new(), message: m }]),
                })?;
                let (checked, w) = typed_check_changes(&res, old, cur, mode)?;
                if let Ok(mut g) = warnings.lock() {
                    *g = w;
                }
                Ok(checked)
            })
            .await?;
        let w = warnings.into_inner().unwrap_or_default();
        Ok(Reply::object(code, obj).with_warnings(w))
    }

    /// Server-side apply: creates a missing object; otherwise merges the applied configuration
    /// with field ownership (conflicts are 409 unless force).
    async fn apply(&self, req: &Request, t: &Target, applied: Value, dry: bool) -> ApiResult<Reply> {
        let manager = match req.query.get("fieldManager") {
            Some(m) if !m.is_empty() => m.to_string(),
            _ => return Err(ApiError::BadRequest("PATCH, application/apply-patch+yaml requires a non-empty fieldManager query parameter".into())),
        };
        let force = req.query.flag("force");
        let mode = validation(req)?;
        let (applied, warnings) = typed_check(&t.res, applied, None, mode)?;
        let name = t.name.clone().unwrap_or_default();
        match meta(&applied)["name"].as_str() {
            Some(n) if n == name => {}
            _ => return Err(ApiError::BadRequest("metadata.name is required and must match the name in the URL for an apply patch".into())),
        }
        let sub = t.sub.clone().unwrap_or_default();
        let now = now_rfc3339();
        let api_version = t.res.api_version();
        let key = t.key();
        for _ in 0..MAX_RETRIES {
            let cur = self.store.get_shared(&key, Freshness::Latest).await?;
            let Some((old, kv)) = cur else {
                if !sub.is_empty() {
                    return Err(t.not_found());
                }
                let obj = crate::managed::apply(&t.res.kind, None, &applied, &manager, &api_version, force, "", &now).map_err(|c| self.apply_conflict(t, &c))?;
                let (obj, _) = self.prepare_create(req, t, obj, None, Some("Ignore"))?;
                crate::node_authz::admit_node_create(&req.user, &t.res, &obj)?;
                crate::server::check_escalation(self, &req.user, &t.res, &obj).await?;
                let stored = self.create_object(t, obj, dry).await?;
                return Ok(Reply::code(201, stored).with_warnings(warnings));
            };
            if let Some(s) = meta(&applied)["resourceVersion"].as_str().filter(|s| !s.is_empty()) {
                if parse_rv(s)? != kv.mod_revision {
                    return Err(t.conflict(MODIFIED));
                }
            }
            let merged = crate::managed::apply(&t.res.kind, Some(&old), &applied, &manager, &api_version, force, &sub, &now).map_err(|c| self.apply_conflict(t, &c))?;
            let new = self.prepare_update(t, &old, merged, t.sub.as_deref())?;
            crate::server::check_escalation(self, &req.user, &t.res, &new).await?;
            if let Some(v) = self.write_update(t, &old, kv.mod_revision, new, dry).await? {
                return Ok(Reply::object(200, v).with_warnings(warnings));
            }
        }
        Err(t.conflict(MODIFIED))
    }

    fn apply_conflict(&self, t: &Target, conflicts: &[crate::managed::Conflict]) -> ApiError {
        let (message, causes) = crate::managed::conflict_message(conflicts);
        ApiError::ApplyConflict { gr: t.res.gr(), name: t.name.clone().unwrap_or_default(), message, causes }
    }

    // ------------------------------------------------------------------ scale

    fn scale_of(&self, t: &Target, obj: &Value) -> Value {
        let m = meta(obj);
        let (spec_path, status_path, sel_path) = &t.res.scale_paths;
        let sel = get_path(obj, sel_path);
        // Built-ins keep a LabelSelector object there; custom resources a selector string.
        let selector = match sel {
            Some(Value::String(s)) => s.clone(),
            Some(v) if !v.is_null() => LabelSelector::from_json(v).map(|s| s.to_string()).unwrap_or_default(),
            _ => String::new(),
        };
        json!({
            "kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {"name": m["name"], "namespace": m["namespace"], "uid": m["uid"], "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"]},
            "spec": {"replicas": get_path(obj, spec_path).and_then(Value::as_i64).unwrap_or(0)},
            "status": {"replicas": get_path(obj, status_path).and_then(Value::as_i64).unwrap_or(0), "selector": selector},
        })
    }

    /// The object with its replicas (at the scale spec path) set.
    fn with_replicas(&self, t: &Target, old: &Value, replicas: i64) -> ApiResult<Value> {
        let mut new = old.clone();
        if !set_path(&mut new, &t.res.scale_paths.0, json!(replicas)) {
            return Err(ApiError::invalid(&t.res.kind, &t.res.group, t.name.as_deref().unwrap_or(""), vec![Cause::invalid(t.res.scale_paths.0.trim_start_matches('.'), "", "cannot be set: a parent field is not an object")]));
        }
        Ok(new)
    }

    pub async fn get_scale(&self, t: &Target) -> ApiResult<Reply> {
        let (obj, _) = self.store.get(&t.key(), Freshness::Latest).await?.ok_or_else(|| t.not_found())?;
        Ok(Reply::ok(self.scale_of(t, &obj)))
    }

    async fn update_scale(&self, req: &Request, t: &Target, body: Value, dry: bool) -> ApiResult<Reply> {
        let replicas = body["spec"]["replicas"].as_i64().unwrap_or(0);
        if replicas < 0 {
            return Err(ApiError::invalid("Scale", "autoscaling", t.name.as_deref().unwrap_or(""), vec![Cause::invalid("spec.replicas", replicas, "must be greater than or equal to 0")]));
        }
        let precondition = match meta(&body)["resourceVersion"].as_str() {
            Some(s) if !s.is_empty() => Some(parse_rv(s)?),
            _ => None,
        };
        let (obj, _) = self
            .guaranteed_update_pinned(req, t, None, dry, precondition, |old| self.with_replicas(t, old, replicas))
            .await?;
        Ok(Reply::ok(self.scale_of(t, &obj.value())))
    }

    async fn patch_scale(&self, req: &Request, t: &Target, ct: &str, patch: Value, dry: bool) -> ApiResult<Reply> {
        let this = self;
        let (obj, _) = self
            .guaranteed_update_pinned(req, t, None, dry, None, |old| {
                let mut scale = this.scale_of(t, old);
                let r = match ct {
                    "application/json-patch+json" => crate::patch::json_patch(&mut scale, &patch),
                    "application/merge-patch+json" => {
                        crate::patch::merge_patch(&mut scale, &patch);
                        Ok(())
                    }
                    _ => crate::patch::strategic_merge_patch("Scale", &mut scale, &patch),
                };
                r.map_err(|e| ApiError::BadRequest(e.to_string()))?;
                let replicas = scale["spec"]["replicas"].as_i64().unwrap_or(0);
                if replicas < 0 {
                    return Err(ApiError::invalid("Scale", "autoscaling", t.name.as_deref().unwrap_or(""), vec![Cause::invalid("spec.replicas", replicas, "must be greater than or equal to 0")]));
                }
                this.with_replicas(t, old, replicas)
            })
            .await?;
        Ok(Reply::ok(self.scale_of(t, &obj.value())))
    }

    // ------------------------------------------------------------------ delete

    pub async fn delete(&self, req: &Request, t: &Target) -> ApiResult<Reply> {
        let opts: Value = if req.body.is_empty() { json!({}) } else { decode_body(req)? };
        let dry = is_dry_run(req)? || opts["dryRun"].as_array().map(|a| !a.is_empty()).unwrap_or(false);
        let grace = match opts["gracePeriodSeconds"].as_i64() {
            Some(g) => Some(g),
            None => req.query.int("gracePeriodSeconds")?,
        };
        let policy = opts["propagationPolicy"].as_str().map(str::to_string).or_else(|| req.query.get("propagationPolicy").map(str::to_string));
        let orphan_legacy = opts["orphanDependents"].as_bool();
        let policy = match (policy.as_deref(), orphan_legacy) {
            (Some(p @ ("Orphan" | "Foreground" | "Background")), _) => Some(p.to_string()),
            (Some(other), _) => return Err(ApiError::invalid("DeleteOptions", "meta.k8s.io", "", vec![Cause::not_supported("propagationPolicy", other, &["Foreground", "Background", "Orphan", "nil"])])),
            (None, Some(true)) => Some("Orphan".into()),
            (None, _) => None,
        };
        let pre_uid = opts["preconditions"]["uid"].as_str().map(str::to_string);
        let pre_rv = opts["preconditions"]["resourceVersion"].as_str().map(str::to_string);
        let v = self.delete_object(t, grace, policy.as_deref(), pre_uid.as_deref(), pre_rv.as_deref(), dry).await?;
        Ok(Reply::ok(v))
    }

    /// Deletes one object: immediately, or by marking it (finalizers, graceful pod deletion).
    pub async fn delete_object(&self, t: &Target, grace: Option<i64>, policy: Option<&str>, pre_uid: Option<&str>, pre_rv: Option<&str>, dry: bool) -> ApiResult<Value> {
        let key = t.key();
        for _ in 0..MAX_RETRIES {
            let (old, kv) = self.store.get(&key, Freshness::Latest).await?.ok_or_else(|| t.not_found())?;
            let m = meta(&old);
            if let Some(u) = pre_uid {
                if m["uid"].as_str() != Some(u) {
                    return Err(t.conflict(&format!("Precondition failed: UID in precondition: {u}, UID in object meta: {}", m["uid"].as_str().unwrap_or(""))));
                }
            }
            if let Some(r) = pre_rv {
                if m["resourceVersion"].as_str() != Some(r) {
                    return Err(t.conflict(&format!("Precondition failed: ResourceVersion in precondition: {r}, ResourceVersion in object meta: {}", m["resourceVersion"].as_str().unwrap_or(""))));
                }
            }
            let mut new = old.clone();
            let mut finalizers: Vec<Value> = m["finalizers"].as_array().cloned().unwrap_or_default();
            let policy_finalizer = match policy {
                Some("Orphan") => Some("orphan"),
                Some("Foreground") => Some("foregroundDeletion"),
                _ => None,
            };
            if let Some(f) = policy_finalizer {
                // Only worth waiting for when something may depend on this object.
                if !finalizers.iter().any(|x| x == f) && m.get("deletionTimestamp").is_none() {
                    finalizers.push(json!(f));
                }
            }
            let is_pod = t.res.group.is_empty() && t.res.kind == "Pod";
            let grace = if is_pod { strategy::pod_grace(&old, grace) } else { 0 };
            let already = m.get("deletionTimestamp").is_some();
            if finalizers.is_empty() && grace == 0 && !spec_finalizers_block(&t.res, &old) {
                if dry {
                    return Ok(old);
                }
                let mut extra = self.owned_release_keys(t, &old).await?;
                extra.extend(fence_guard(&t.res, &old).map(|g| g.key));
                if let Some(rev) = self.store.delete(&key, kv.mod_revision, extra).await? {
                    let mut gone = old.clone();
                    crate::store::set_rv(&mut gone, rev);
                    if is_pod {
                        return Ok(gone);
                    }
                    return Ok(json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                        "details": {"name": m["name"], "group": t.res.group, "kind": t.res.plural, "uid": m["uid"]}}));
                }
                continue;
            }
            // Mark for deletion; finalizers (or the node, for a graceful pod) finish it.
            let nm = meta_mut(&mut new);
            if !finalizers.is_empty() {
                nm.insert("finalizers".into(), json!(finalizers));
            }
            if already {
                // A second delete may only shorten the grace period.
                let cur = nm.get("deletionGracePeriodSeconds").and_then(Value::as_i64).unwrap_or(0);
                if is_pod && grace < cur {
                    nm.insert("deletionGracePeriodSeconds".into(), json!(grace));
                    nm.insert("deletionTimestamp".into(), json!(rfc3339_in(grace)));
                }
            } else {
                nm.insert("deletionTimestamp".into(), json!(if is_pod { rfc3339_in(grace) } else { now_rfc3339() }));
                nm.insert("deletionGracePeriodSeconds".into(), json!(grace));
                if strategy::tracks_generation(&t.res) {
                    let g = nm.get("generation").and_then(Value::as_i64).unwrap_or(0) + 1;
                    nm.insert("generation".into(), json!(g));
                }
            }
            if t.res.group.is_empty() && t.res.kind == "Namespace" {
                new["status"]["phase"] = json!("Terminating");
            }
            if dry {
                return Ok(new);
            }
            if new == old {
                return Ok(old);
            }
            if let Some(rev) = self.store.update(&key, kv.mod_revision, &new).await? {
                crate::store::set_rv(&mut new, rev);
                return Ok(new);
            }
        }
        Err(t.conflict(MODIFIED))
    }

    pub async fn delete_collection(&self, req: &Request, t: &Target) -> ApiResult<Reply> {
        let (ls, fs) = self.filter(req, &t.res)?;
        let opts: Value = if req.body.is_empty() { json!({}) } else { decode_body(req)? };
        // client-go sends dryRun in the DeleteOptions body, others in the query.
        let dry = is_dry_run(req)? || opts["dryRun"].as_array().map(|a| !a.is_empty()).unwrap_or(false);
        let grace = opts["gracePeriodSeconds"].as_i64().or(req.query.int("gracePeriodSeconds")?);
        let policy = opts["propagationPolicy"].as_str().map(str::to_string);
        let (start, end) = collection_range(&t.res, t.ns.as_deref());
        let keep = |v: &Value| ls.matches_object(v) && fs.matches(v);
        let page = self.store.list(&start, &end, Freshness::Latest, 0, &keep).await?;
        let mut deleted = Vec::new();
        for (obj, _) in page.items {
            let name = meta(&obj)["name"].as_str().unwrap_or("").to_string();
            let ns = meta(&obj)["namespace"].as_str().map(str::to_string);
            let target = Target { res: t.res.clone(), ns, name: Some(name), sub: None };
            match self.delete_object(&target, grace, policy.as_deref(), None, None, dry).await {
                Ok(_) | Err(ApiError::NotFound { .. }) => deleted.push(obj),
                Err(e) => return Err(e),
            }
        }
        let rv = self.store.current_revision().to_string();
        Ok(Reply::ok(json!({"kind": t.res.list_kind, "apiVersion": t.res.api_version(), "metadata": {"resourceVersion": rv}, "items": deleted})))
    }
}

/// A namespace also waits for its spec.finalizers (the `kubernetes` one: its contents are
/// deleted first) before it goes.
fn spec_finalizers_block(res: &ResourceDef, obj: &Value) -> bool {
    res.group.is_empty() && res.kind == "Namespace" && obj["spec"]["finalizers"].as_array().map(|a| !a.is_empty()).unwrap_or(false)
}

/// A Lease write also writes the Lease's fence (its holder and leaseTransitions), in the same
/// transaction, so that fenced writes (see store::Fence) stop the moment the Lease changes hands.
fn fence_guard(res: &ResourceDef, obj: &Value) -> Option<crate::store::Guard> {
    if !(res.group == "coordination.k8s.io" && res.kind == "Lease") {
        return None;
    }
    let ns = obj["metadata"]["namespace"].as_str()?;
    let name = obj["metadata"]["name"].as_str()?;
    let holder = obj["spec"]["holderIdentity"].as_str().unwrap_or("");
    let epoch = obj["spec"]["leaseTransitions"].as_i64().unwrap_or(0);
    Some(crate::store::Guard { key: crate::store::fence_key(ns, name), revision: None, value: crate::store::fence_token(holder, epoch) })
}

/// The value at a dotted path like ".spec.replicas".
pub fn get_path<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let path = path.trim_start_matches('.');
    if path.is_empty() {
        return None;
    }
    path.split('.').try_fold(v, |cur, k| cur.get(k))
}

/// Sets the value at a dotted path, creating objects on the way; false (and nothing changed)
/// when something on the way is not an object.
pub fn set_path(v: &mut Value, path: &str, val: Value) -> bool {
    let parts: Vec<&str> = path.trim_start_matches('.').split('.').filter(|p| !p.is_empty()).collect();
    let Some((last, parents)) = parts.split_last() else { return false };
    let mut cur = v;
    for p in parents {
        let Some(m) = cur.as_object_mut() else { return false };
        cur = m.entry(p.to_string()).or_insert_with(|| json!({}));
    }
    match cur.as_object_mut() {
        Some(m) => {
            m.insert(last.to_string(), val);
            true
        }
        None => false,
    }
}

/// Server-side printing: the built-in printers, or the CRD's columns for custom resources.
pub fn table_of(res: &ResourceDef, objs: &[Value], rv: &str, cont: Option<&str>, include_object: &str, with_headers: bool) -> Value {
    if res.typed.is_none() {
        crate::crd::table(res, objs, rv, cont, include_object, with_headers, now_unix())
    } else {
        crate::table::table(&res.kind, objs, rv, cont, None, include_object, with_headers, now_unix())
    }
}

/// Just what label selectors and metadata field selectors look at; serde skips the rest
/// without building it.
#[derive(serde::Deserialize)]
struct LightObject {
    #[serde(default)]
    metadata: LightMeta,
}

#[derive(serde::Deserialize, Default)]
struct LightMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    labels: Option<serde_json::Map<String, Value>>,
}

/// Continue tokens: the snapshot revision and the next key, opaque to clients.
pub fn encode_continue(rev: i64, key: &[u8]) -> String {
    let v = json!({"v": "kuberaft/1", "rv": rev, "start": base64::engine::general_purpose::STANDARD.encode(key)});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

pub fn decode_continue(tok: &str) -> ApiResult<(i64, Vec<u8>)> {
    let bad = || ApiError::BadRequest("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)".into());
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(tok.trim_end_matches('=')).map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rev = v["rv"].as_i64().filter(|r| *r > 0).ok_or_else(bad)?;
    let key = base64::engine::general_purpose::STANDARD.decode(v["start"].as_str().ok_or_else(bad)?).map_err(|_| bad())?;
    Ok((rev, key))
}

/// `Target::sub` for the server's own binding write (see `prepare_update`).
pub(crate) const BINDING: &str = "binding";

/// Whether an update changes nothing but what does not count: resourceVersion and the
/// timestamps of managedFields entries (compared in place: cloning both objects to strip
/// those was a large share of every update's cost).
fn same_but_versions(old: &Value, new: &Value) -> bool {
    let (Some(o), Some(n)) = (old.as_object(), new.as_object()) else { return old == new };
    if o.len() != n.len() {
        return false;
    }
    o.iter().all(|(k, ov)| {
        let Some(nv) = n.get(k) else { return false };
        if k != "metadata" {
            return ov == nv;
        }
        let (Some(om), Some(nm)) = (ov.as_object(), nv.as_object()) else { return ov == nv };
        let counted = |m: &'_ serde_json::Map<String, Value>| m.keys().filter(|k| *k != "resourceVersion").count();
        if counted(om) != counted(nm) {
            return false;
        }
        om.iter().filter(|(k, _)| *k != "resourceVersion").all(|(k, ov)| {
            let Some(nv) = nm.get(k) else { return false };
            if k != "managedFields" {
                return ov == nv;
            }
            match (ov.as_array(), nv.as_array()) {
                (Some(oa), Some(na)) => {
                    oa.len() == na.len()
                        && oa.iter().zip(na).all(|(oe, ne)| match (oe.as_object(), ne.as_object()) {
                            (Some(oe), Some(ne)) => {
                                oe.iter().filter(|(k, _)| *k != "time").count() == ne.iter().filter(|(k, _)| *k != "time").count()
                                    && oe.iter().filter(|(k, _)| *k != "time").all(|(k, v)| ne.get(k) == Some(v))
                            }
                            _ => oe == ne,
                        })
                }
                _ => ov == nv,
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_that_changes_only_versions_is_no_change() {
        let old = json!({"metadata": {"name": "a", "resourceVersion": "5", "managedFields": [{"manager": "m", "time": "t1", "fieldsV1": {"f:x": {}}}]}, "spec": {"x": 1}});
        let same = json!({"metadata": {"name": "a", "managedFields": [{"manager": "m", "time": "t2", "fieldsV1": {"f:x": {}}}]}, "spec": {"x": 1}});
        assert!(same_but_versions(&old, &same));
        for changed in [
            json!({"metadata": {"name": "a", "managedFields": [{"manager": "m", "time": "t2", "fieldsV1": {"f:y": {}}}]}, "spec": {"x": 1}}),
            json!({"metadata": {"name": "a", "managedFields": [{"manager": "m", "time": "t1", "fieldsV1": {"f:x": {}}}]}, "spec": {"x": 2}}),
            json!({"metadata": {"name": "a", "labels": {"k": "v"}, "managedFields": [{"manager": "m", "time": "t1", "fieldsV1": {"f:x": {}}}]}, "spec": {"x": 1}}),
            json!({"metadata": {"name": "a"}, "spec": {"x": 1}}),
            json!({"metadata": {"name": "a", "managedFields": [{"manager": "m", "time": "t1", "fieldsV1": {"f:x": {}}}]}, "spec": {"x": 1}, "status": {}}),
        ] {
            assert!(!same_but_versions(&old, &changed), "{changed}");
        }
    }

    fn pods() -> ResourceDef {
        crate::catalog::Catalog::new().get().lookup("", "v1", "pods").expect("pods").as_ref().clone()
    }

    #[test]
    fn checking_only_the_changed_fields_finds_what_a_full_check_finds() {
        let res = pods();
        let old = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "d"}, "spec": {"containers": [{"name": "c", "image": "i"}]}, "status": {"phase": "Pending"}});
        // A status change: checked, unknown fields dropped (with a warning), the rest untouched.
        let mut new = old.clone();
        new["status"] = json!({"phase": "Running", "bogus": 1, "conditions": [{"type": "Ready", "status": "True"}]});
        let (part, pw) = typed_check_changes(&res, &old, new.clone(), Validation::Warn).expect("valid");
        let (full, fw) = typed_check(&res, new, None, Validation::Warn).expect("valid");
        assert_eq!(part, full);
        assert_eq!(pw, fw);
        assert!(part["status"].get("bogus").is_none());
        assert_eq!(part["spec"], old["spec"]);
        // A wrong type in a changed field is refused; a removed field is just gone.
        let mut bad = old.clone();
        bad["status"]["phase"] = json!(3);
        assert!(matches!(typed_check_changes(&res, &old, bad, Validation::Warn), Err(ApiError::BadRequest(_))));
        let mut gone = old.clone();
        gone.as_object_mut().expect("object").remove("status");
        let (g, _) = typed_check_changes(&res, &old, gone, Validation::Warn).expect("valid");
        assert!(g.get("status").is_none());
        // Strict mode refuses unknown fields in what changed; the kind is still checked.
        let mut strict = old.clone();
        strict["metadata"]["labels"] = json!({"a": "b"});
        strict["spec"]["bogus"] = json!(true);
        assert!(typed_check_changes(&res, &old, strict, Validation::Strict).is_err());
        let mut kind = old.clone();
        kind["kind"] = json!("Service");
        assert!(typed_check_changes(&res, &old, kind, Validation::Warn).is_err());
        // A top-level field the check drops goes (Warn), as with the full check.
        let mut extra = old.clone();
        extra["bogus"] = json!(1);
        let (e, w) = typed_check_changes(&res, &old, extra, Validation::Warn).expect("valid");
        assert!(e.get("bogus").is_none() && !w.is_empty(), "{e} {w:?}");
    }

    #[test]
    fn types_with_required_fields_that_did_not_change_still_check() {
        let cat = crate::catalog::Catalog::new().get();
        let rb = cat.lookup("rbac.authorization.k8s.io", "v1", "rolebindings").expect("rolebindings");
        let old = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "b", "namespace": "d"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"}, "subjects": [{"kind": "User", "name": "a"}]});
        let mut new = old.clone();
        new["subjects"] = json!([{"kind": "User", "name": "b"}]);
        let (out, _) = typed_check_changes(&rb, &old, new.clone(), Validation::Strict).expect("a subjects change is valid");
        assert_eq!(out, typed_check(&rb, new, None, Validation::Strict).expect("valid").0);
        let mut bad = old.clone();
        bad["subjects"] = json!("nobody");
        assert!(typed_check_changes(&rb, &old, bad, Validation::Strict).is_err());
        let pc = cat.lookup("scheduling.k8s.io", "v1", "priorityclasses").expect("priorityclasses");
        let old = json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "p"}, "value": 10});
        let mut new = old.clone();
        new["description"] = json!("high");
        assert_eq!(typed_check_changes(&pc, &old, new, Validation::Strict).expect("valid").0["description"], "high");
    }

    #[test]
    fn a_status_write_keeps_everything_but_status_and_managed_fields() {
        let old = json!({"metadata": {"name": "p", "labels": {"a": "b"}, "managedFields": [{"manager": "old"}]}, "spec": {"x": 1}, "status": {"s": 1}});
        let mut new = json!({"metadata": {"name": "p", "labels": {"a": "CHANGED"}, "managedFields": [{"manager": "new"}]}, "spec": {"x": 2}, "status": {"s": 2}, "extra": 1});
        keep_all_but_status(&old, &mut new);
        assert_eq!(new, json!({"metadata": {"name": "p", "labels": {"a": "b"}, "managedFields": [{"manager": "new"}]}, "spec": {"x": 1}, "status": {"s": 2}}));
        // No managedFields given: the stored ones stay; no status given: none is kept.
        let mut bare = json!({"metadata": {"name": "p"}, "spec": {"x": 1}});
        keep_all_but_status(&old, &mut bare);
        assert_eq!(bare, json!({"metadata": {"name": "p", "labels": {"a": "b"}, "managedFields": [{"manager": "old"}]}, "spec": {"x": 1}}));
    }

    #[test]
    fn continue_tokens_round_trip_and_garbage_is_a_bad_request() {
        let t = encode_continue(42, b"/registry/pods/default/web-1");
        assert_eq!(decode_continue(&t).expect("ok"), (42, b"/registry/pods/default/web-1".to_vec()));
        assert!(matches!(decode_continue("!!!"), Err(ApiError::BadRequest(_))));
        assert!(matches!(decode_continue("e30"), Err(ApiError::BadRequest(_))));
    }

    #[test]
    fn unknown_fields_are_reported_with_their_paths() {
        let raw = json!({"metadata":{"name":"a","bogus":1},"spec":{"containers":[{"name":"c","x":2}]}});
        let typed = json!({"metadata":{"name":"a"},"spec":{"containers":[{"name":"c"}]}});
        let mut out = vec![];
        unknown_fields(&raw, &typed, "", &mut out);
        assert_eq!(out, vec!["metadata.bogus".to_string(), "spec.containers[0].x".to_string()]);
    }
}
