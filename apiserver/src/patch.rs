//! PATCH body application: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and the
//! Kubernetes strategic merge patch for built-in kinds.
//!
//! Strategic merge patch follows apimachinery's `pkg/util/strategicpatch` as applied by the
//! API server. Deliberate differences, all on inputs upstream mishandles: directive keys and
//! unmatched nulls are stripped from newly added values too, `$patch: delete` on a nested map
//! removes the key (upstream leaves `{}`), and `$deleteFromPrimitiveList` on a missing list
//! is a no-op. Without `$setElementOrder`, new keyed elements are appended.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;

use serde_json::{Map, Value};

/// What went wrong applying a patch. `Malformed` = the patch document itself is bad (HTTP 400),
/// `Failed` = well-formed but cannot be applied, e.g. a JSON-patch `test` failed or path missing
/// (HTTP 422).
#[derive(Debug, Clone, PartialEq)]
pub enum PatchError {
    Malformed(String),
    Failed(String),
}

impl fmt::Display for PatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PatchError::Malformed(msg) => write!(f, "malformed patch: {msg}"),
            PatchError::Failed(msg) => write!(f, "patch could not be applied: {msg}"),
        }
    }
}

impl std::error::Error for PatchError {}

/// How a list field is combined with the list in a strategic merge patch.
#[derive(Debug, Clone, PartialEq)]
pub enum ListStrategy {
    /// The patch list replaces the whole list.
    Replace,
    /// Elements are objects identified by this field; matching ones merge, new ones are added.
    MergeByKey(&'static str),
    /// List of scalars merged as an ordered set union.
    PrimitiveUnion,
}

fn malformed(msg: impl Into<String>) -> PatchError {
    PatchError::Malformed(msg.into())
}

/// Removes `key` keeping the order of the others (plain `remove` reorders under
/// serde_json's `preserve_order` feature).
fn remove_key(map: &mut Map<String, Value>, key: &str) {
    if map.contains_key(key) {
        map.retain(|k, _| k != key);
    }
}

// ---------------------------------------------------------------------------------------------
// RFC 7386
// ---------------------------------------------------------------------------------------------

/// RFC 7386 merge patch: null deletes, objects merge recursively, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target_map) = target else {
        return;
    };
    for (key, value) in patch_map {
        if value.is_null() {
            remove_key(target_map, key);
            continue;
        }
        match target_map.get_mut(key) {
            Some(slot) => merge_patch(slot, value),
            None => {
                // Merging into null strips nulls nested in the new value, as the RFC requires.
                let mut fresh = Value::Null;
                merge_patch(&mut fresh, value);
                target_map.insert(key.clone(), fresh);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// RFC 6902
// ---------------------------------------------------------------------------------------------

/// RFC 6902 JSON patch; `patch` is the parsed body (must be an array of ops).
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    if !patch.is_array() {
        return Err(malformed("a JSON patch must be an array of operations"));
    }
    let ops: ::json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| malformed(format!("invalid JSON patch: {e}")))?;
    // Work on a copy with `patch_unsafe`: the rollback inside `json_patch::patch` can hit an
    // `unreachable!` (e.g. a `move` to a parent path followed by a failing op).
    let mut doc = target.clone();
    ::json_patch::patch_unsafe(&mut doc, &ops.0).map_err(|e| PatchError::Failed(e.to_string()))?;
    *target = doc;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Strategic merge patch
// ---------------------------------------------------------------------------------------------

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ORDER_PREFIX: &str = "$setElementOrder/";
const DELETE_PRIMITIVE_PREFIX: &str = "$deleteFromPrimitiveList/";

fn is_directive_key(key: &str) -> bool {
    key == DIRECTIVE
        || key == RETAIN_KEYS
        || key.starts_with(SET_ORDER_PREFIX)
        || key.starts_with(DELETE_PRIMITIVE_PREFIX)
}

/// Kubernetes strategic merge patch for built-in kind `kind` (e.g. "Deployment", "Pod",
/// "Service", "Node"...).
pub fn strategic_merge_patch(
    kind: &str,
    target: &mut Value,
    patch: &Value,
) -> Result<(), PatchError> {
    let Value::Object(patch_map) = patch else {
        return Err(malformed("a strategic merge patch must be a JSON object"));
    };
    // Work on a copy so a failing patch leaves the target untouched.
    let mut work = match target {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    let smp = Smp { kind };
    let mut path = Vec::new();
    if !smp.merge_map(&mut work, patch_map, &mut path)? {
        // `$patch: delete` at the root: nothing of the object survives.
        work.clear();
    }
    *target = Value::Object(work);
    Ok(())
}

/// Merge strategy of the list at `path` (JSON field names from the object root, with list
/// elements skipped, e.g. ["spec","template","spec","containers"]) in kind `kind`.
pub fn list_strategy(kind: &str, path: &[&str]) -> ListStrategy {
    use ListStrategy::*;
    if !is_builtin_kind(kind) {
        return Replace;
    }
    // ObjectMeta sits at the root and inside templates; its parent field is always `metadata`.
    if let [.., "metadata", last] = path {
        match *last {
            "finalizers" => return PrimitiveUnion,
            "ownerReferences" => return MergeByKey("uid"),
            _ => {}
        }
    }
    if let Some(prefix) = pod_spec_prefix(kind) {
        if path.len() > prefix.len() && path.starts_with(prefix) {
            return pod_spec_list(&path[prefix.len()..]);
        }
    }
    match (kind, path) {
        ("Pod", ["status", "podIPs" | "hostIPs"]) => MergeByKey("ip"),
        ("Pod", ["status", "resourceClaimStatuses"]) => MergeByKey("name"),
        ("Node", ["spec", "podCIDRs"]) => PrimitiveUnion,
        ("Node", ["status", "addresses"]) => MergeByKey("type"),
        ("Service", ["spec", "ports"]) => MergeByKey("port"),
        ("ServiceAccount", ["secrets"]) => MergeByKey("name"),
        ("MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration", ["webhooks"]) => {
            MergeByKey("name")
        }
        // Every built-in status condition list is keyed by `type`.
        (_, [.., "conditions"]) => MergeByKey("type"),
        _ => Replace,
    }
}

/// Where the PodSpec lives in kinds that embed one.
fn pod_spec_prefix(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Pod" => Some(&["spec"]),
        "PodTemplate" => Some(&["template", "spec"]),
        "Deployment"
        | "ReplicaSet"
        | "StatefulSet"
        | "DaemonSet"
        | "Job"
        | "ReplicationController" => Some(&["spec", "template", "spec"]),
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template", "spec"]),
        _ => None,
    }
}

/// List strategies inside a PodSpec (`rel` is relative to the PodSpec).
fn pod_spec_list(rel: &[&str]) -> ListStrategy {
    use ListStrategy::*;
    match rel {
        ["containers" | "initContainers" | "ephemeralContainers"] => MergeByKey("name"),
        ["volumes" | "imagePullSecrets" | "schedulingGates" | "resourceClaims"] => {
            MergeByKey("name")
        }
        ["hostAliases"] => MergeByKey("ip"),
        ["topologySpreadConstraints"] => MergeByKey("topologyKey"),
        ["containers" | "initContainers" | "ephemeralContainers", field] => match *field {
            "env" => MergeByKey("name"),
            "ports" => MergeByKey("containerPort"),
            "volumeMounts" => MergeByKey("mountPath"),
            "volumeDevices" => MergeByKey("devicePath"),
            _ => Replace,
        },
        _ => Replace,
    }
}

/// Built-in kinds served with strategic merge patch; anything else is a custom resource.
fn is_builtin_kind(kind: &str) -> bool {
    matches!(
        kind,
        "Pod"
            | "PodTemplate"
            | "ReplicationController"
            | "Service"
            | "Endpoints"
            | "Node"
            | "Namespace"
            | "ConfigMap"
            | "Secret"
            | "ServiceAccount"
            | "PersistentVolume"
            | "PersistentVolumeClaim"
            | "Event"
            | "LimitRange"
            | "ResourceQuota"
            | "ComponentStatus"
            | "Binding"
            | "Deployment"
            | "ReplicaSet"
            | "StatefulSet"
            | "DaemonSet"
            | "ControllerRevision"
            | "Job"
            | "CronJob"
            | "HorizontalPodAutoscaler"
            | "Ingress"
            | "IngressClass"
            | "NetworkPolicy"
            | "IPAddress"
            | "ServiceCIDR"
            | "EndpointSlice"
            | "Role"
            | "RoleBinding"
            | "ClusterRole"
            | "ClusterRoleBinding"
            | "StorageClass"
            | "CSIDriver"
            | "CSINode"
            | "CSIStorageCapacity"
            | "VolumeAttachment"
            | "VolumeAttributesClass"
            | "PriorityClass"
            | "Lease"
            | "LeaseCandidate"
            | "PodDisruptionBudget"
            | "MutatingWebhookConfiguration"
            | "ValidatingWebhookConfiguration"
            | "ValidatingAdmissionPolicy"
            | "ValidatingAdmissionPolicyBinding"
            | "MutatingAdmissionPolicy"
            | "MutatingAdmissionPolicyBinding"
            | "CustomResourceDefinition"
            | "APIService"
            | "RuntimeClass"
            | "FlowSchema"
            | "PriorityLevelConfiguration"
            | "CertificateSigningRequest"
            | "ClusterTrustBundle"
            | "ResourceClaim"
            | "ResourceClaimTemplate"
            | "DeviceClass"
            | "ResourceSlice"
    )
}

/// Identity of a list element for matching: its merge-key value for keyed lists, the value
/// itself otherwise. Serialized so it can be hashed (Value has no Hash).
fn element_id(value: &Value, key: Option<&str>) -> Option<String> {
    match key {
        Some(k) => value.as_object()?.get(k).map(Value::to_string),
        None => Some(value.to_string()),
    }
}

struct Smp<'a> {
    kind: &'a str,
}

impl Smp<'_> {
    /// Merges `patch` into `target`; returns false when the patch says `$patch: delete`.
    fn merge_map<'p>(
        &self,
        target: &mut Map<String, Value>,
        patch: &'p Map<String, Value>,
        path: &mut Vec<&'p str>,
    ) -> Result<bool, PatchError> {
        match patch.get(DIRECTIVE) {
            None => {}
            Some(Value::String(d)) => match d.as_str() {
                "delete" => return Ok(false),
                // Replace = merge the rest of the patch into nothing.
                "replace" => target.clear(),
                "merge" => {}
                other => return Err(malformed(format!("unknown $patch directive {other:?}"))),
            },
            Some(other) => return Err(malformed(format!("$patch must be a string, got {other}"))),
        }

        if let Some(retain) = patch.get(RETAIN_KEYS) {
            let Value::Array(names) = retain else {
                return Err(malformed("$retainKeys must be a list of field names"));
            };
            let mut keep = HashSet::with_capacity(names.len());
            for name in names {
                let Value::String(name) = name else {
                    return Err(malformed("$retainKeys must be a list of field names"));
                };
                keep.insert(name.as_str());
            }
            // Upstream rejects a patch that sets a field it also asks to drop.
            for (k, v) in patch {
                if !v.is_null() && !is_directive_key(k) && !keep.contains(k.as_str()) {
                    return Err(malformed(format!(
                        "field {k:?} is not listed in $retainKeys"
                    )));
                }
            }
            target.retain(|k, _| keep.contains(k.as_str()));
        }

        // Parallel-list directives are applied after the merge; ordering needs the live list
        // as it was before the patch (upstream interleaves unmentioned elements by it).
        let mut orders: Vec<(&'p str, &'p [Value], Vec<Value>)> = Vec::new();
        let mut deletions: Vec<(&'p str, &'p [Value])> = Vec::new();
        for (k, v) in patch {
            if let Some(list) = k.strip_prefix(SET_ORDER_PREFIX) {
                let Value::Array(order) = v else {
                    return Err(malformed(format!("{k} must be a list")));
                };
                let before = match target.get(list) {
                    Some(Value::Array(live)) => live.clone(),
                    _ => Vec::new(),
                };
                orders.push((list, order.as_slice(), before));
            } else if let Some(list) = k.strip_prefix(DELETE_PRIMITIVE_PREFIX) {
                let Value::Array(values) = v else {
                    return Err(malformed(format!("{k} must be a list")));
                };
                deletions.push((list, values.as_slice()));
            }
        }

        for (k, v) in patch {
            let k = k.as_str();
            if is_directive_key(k) {
                continue;
            }
            match v {
                Value::Null => remove_key(target, k),
                Value::Object(patch_child) => {
                    path.push(k);
                    let merged = match target.get_mut(k) {
                        Some(Value::Object(live)) => self
                            .merge_map(live, patch_child, path)
                            .map(|keep| (keep, None)),
                        _ => {
                            let mut fresh = Map::new();
                            self.merge_map(&mut fresh, patch_child, path)
                                .map(|keep| (keep, Some(fresh)))
                        }
                    };
                    path.pop();
                    match merged? {
                        (false, _) => remove_key(target, k),
                        (true, Some(fresh)) => {
                            target.insert(k.to_owned(), Value::Object(fresh));
                        }
                        (true, None) => {}
                    }
                }
                Value::Array(patch_list) => {
                    path.push(k);
                    let merged = match target.get_mut(k) {
                        Some(Value::Array(live)) => {
                            self.merge_list(live, patch_list, path).map(|()| None)
                        }
                        _ => {
                            let mut fresh = Vec::new();
                            self.merge_list(&mut fresh, patch_list, path)
                                .map(|()| Some(fresh))
                        }
                    };
                    path.pop();
                    if let Some(fresh) = merged? {
                        target.insert(k.to_owned(), Value::Array(fresh));
                    }
                }
                scalar => {
                    target.insert(k.to_owned(), scalar.clone());
                }
            }
        }

        for (list, order, before) in orders {
            path.push(list);
            let strategy = list_strategy(self.kind, path);
            path.pop();
            let key = match strategy {
                ListStrategy::MergeByKey(key) => Some(key),
                ListStrategy::PrimitiveUnion => None,
                // Order is meaningless for a list the patch replaces.
                ListStrategy::Replace => continue,
            };
            if let Some(Value::Array(patch_list)) = patch.get(list) {
                check_order_consistent(patch_list, order, key)?;
            }
            if let Some(Value::Array(live)) = target.get_mut(list) {
                apply_element_order(live, order, &before, key)?;
            }
        }

        for (list, values) in deletions {
            if let Some(Value::Array(live)) = target.get_mut(list) {
                let doomed: HashSet<String> = values.iter().map(Value::to_string).collect();
                live.retain(|v| !doomed.contains(&v.to_string()));
            }
        }
        Ok(true)
    }

    /// Merges a patch list into the live list at `path` according to its strategy.
    fn merge_list<'p>(
        &self,
        target: &mut Vec<Value>,
        patch: &'p [Value],
        path: &mut Vec<&'p str>,
    ) -> Result<(), PatchError> {
        let strategy = list_strategy(self.kind, path);

        // Pull out `$patch` elements: the list-level replace marker and keyed deletions.
        let mut replace = false;
        let mut deletes: HashSet<String> = HashSet::new();
        let mut items: Vec<&'p Value> = Vec::with_capacity(patch.len());
        for element in patch {
            let directive = element.as_object().and_then(|m| m.get(DIRECTIVE));
            match directive {
                None => items.push(element),
                Some(Value::String(d)) => match d.as_str() {
                    "replace" => replace = true,
                    "delete" => {
                        // Only keyed lists can name what to delete; elsewhere there is nothing
                        // to match against, so the element is simply dropped.
                        if let ListStrategy::MergeByKey(key) = strategy {
                            match element.get(key) {
                                Some(kv) => {
                                    deletes.insert(kv.to_string());
                                }
                                None => {
                                    return Err(malformed(format!(
                                        "$patch: delete element lacks merge key {key:?}"
                                    )))
                                }
                            }
                        }
                    }
                    "merge" => {
                        return Err(malformed("$patch: merge is not supported on list elements"))
                    }
                    other => return Err(malformed(format!("unknown $patch directive {other:?}"))),
                },
                Some(other) => {
                    return Err(malformed(format!("$patch must be a string, got {other}")))
                }
            }
        }

        match strategy {
            _ if replace => {
                *target = self.fresh_list(&items, path)?;
                if strategy == ListStrategy::PrimitiveUnion {
                    dedup(target);
                }
            }
            ListStrategy::Replace => *target = self.fresh_list(&items, path)?,
            ListStrategy::PrimitiveUnion => {
                let mut seen: HashSet<String> = HashSet::new();
                target.retain(|v| seen.insert(v.to_string()));
                for item in items {
                    if seen.insert(item.to_string()) {
                        target.push(item.clone());
                    }
                }
            }
            ListStrategy::MergeByKey(key) => {
                if !deletes.is_empty() {
                    target.retain(|el| match element_id(el, Some(key)) {
                        Some(id) => !deletes.contains(&id),
                        None => true,
                    });
                }
                // First live element per key, as upstream matches the first one.
                let mut index: HashMap<String, usize> = HashMap::new();
                for (i, el) in target.iter().enumerate() {
                    if let Some(id) = element_id(el, Some(key)) {
                        index.entry(id).or_insert(i);
                    }
                }
                for item in items {
                    let Value::Object(patch_el) = item else {
                        return Err(malformed(format!(
                            "elements of a list merged by {key:?} must be objects"
                        )));
                    };
                    let Some(kv) = patch_el.get(key) else {
                        return Err(malformed(format!("list element lacks merge key {key:?}")));
                    };
                    let id = kv.to_string();
                    match index.get(&id).and_then(|&i| target.get_mut(i)) {
                        Some(Value::Object(live)) => {
                            // Items carry no `$patch` (filtered above), so they never delete.
                            self.merge_map(live, patch_el, path)?;
                        }
                        _ => {
                            let mut fresh = Map::new();
                            if self.merge_map(&mut fresh, patch_el, path)? {
                                index.insert(id, target.len());
                                target.push(Value::Object(fresh));
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Builds a list from patch elements alone, resolving directives and nulls inside them.
    fn fresh_list<'p>(
        &self,
        items: &[&'p Value],
        path: &mut Vec<&'p str>,
    ) -> Result<Vec<Value>, PatchError> {
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Value::Object(patch_el) => {
                    let mut fresh = Map::new();
                    if self.merge_map(&mut fresh, patch_el, path)? {
                        out.push(Value::Object(fresh));
                    }
                }
                other => out.push((*other).clone()),
            }
        }
        Ok(out)
    }
}

fn dedup(list: &mut Vec<Value>) {
    let mut seen: HashSet<String> = HashSet::new();
    list.retain(|v| seen.insert(v.to_string()));
}

/// Ids of a `$setElementOrder` list; keyed entries must carry the merge key.
fn order_ids(order: &[Value], key: Option<&str>) -> Result<Vec<String>, PatchError> {
    order
        .iter()
        .map(|entry| {
            element_id(entry, key).ok_or_else(|| {
                malformed(format!(
                    "$setElementOrder entries must be objects with merge key {:?}",
                    key.unwrap_or_default()
                ))
            })
        })
        .collect()
}

/// The patch list's own elements must appear in `$setElementOrder` in the same relative order
/// (upstream rejects the patch otherwise).
fn check_order_consistent(
    patch_list: &[Value],
    order: &[Value],
    key: Option<&str>,
) -> Result<(), PatchError> {
    let order = order_ids(order, key)?;
    let mut pos = 0;
    for element in patch_list {
        if element
            .as_object()
            .is_some_and(|m| m.contains_key(DIRECTIVE))
        {
            continue;
        }
        let Some(id) = element_id(element, key) else {
            return Err(malformed(format!(
                "list element lacks merge key {:?}",
                key.unwrap_or_default()
            )));
        };
        match order[pos..].iter().position(|o| *o == id) {
            Some(found) => pos += found + 1,
            None => {
                return Err(malformed(
                    "the order of the patch list does not match its $setElementOrder list",
                ))
            }
        }
    }
    Ok(())
}

/// Reorders the merged list: elements named in `order` take that order; the rest keep their
/// relative order from the pre-patch list and are interleaved with the named ones by their
/// pre-patch positions (upstream's best-effort merge of the two sorted runs).
fn apply_element_order(
    list: &mut Vec<Value>,
    order: &[Value],
    before: &[Value],
    key: Option<&str>,
) -> Result<(), PatchError> {
    let mut order_pos: HashMap<String, usize> = HashMap::new();
    for (i, id) in order_ids(order, key)?.into_iter().enumerate() {
        order_pos.entry(id).or_insert(i);
    }
    let mut live_pos: HashMap<String, usize> = HashMap::new();
    for (i, el) in before.iter().enumerate() {
        if let Some(id) = element_id(el, key) {
            live_pos.entry(id).or_insert(i);
        }
    }

    // (position in `order`, position before the patch, element)
    let mut named: Vec<(usize, Option<usize>, Value)> = Vec::new();
    let mut others: Vec<(Option<usize>, Value)> = Vec::new();
    for el in std::mem::take(list) {
        let id = element_id(&el, key);
        let live = id.as_ref().and_then(|id| live_pos.get(id).copied());
        match id.as_ref().and_then(|id| order_pos.get(id).copied()) {
            Some(p) => named.push((p, live, el)),
            None => others.push((live, el)),
        }
    }
    named.sort_by_key(|(p, _, _)| *p);
    others.sort_by_key(|(live, _)| live.unwrap_or(usize::MAX));

    let mut named: VecDeque<_> = named.into();
    let mut others: VecDeque<_> = others.into();
    let mut out = Vec::with_capacity(named.len() + others.len());
    loop {
        let take_other = match (others.front(), named.front()) {
            (Some((Some(o), _)), Some((_, Some(n), _))) => o < n,
            (Some(_), Some(_)) => false,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        let next = if take_other {
            others.pop_front().map(|(_, el)| el)
        } else {
            named.pop_front().map(|(_, _, el)| el)
        };
        match next {
            Some(el) => out.push(el),
            None => break,
        }
    }
    *list = out;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(kind: &str, mut target: Value, patch: Value) -> Value {
        match strategic_merge_patch(kind, &mut target, &patch) {
            Ok(()) => target,
            Err(e) => panic!("patch failed: {e}"),
        }
    }

    fn smp_err(kind: &str, target: Value, patch: Value) -> PatchError {
        let mut t = target.clone();
        match strategic_merge_patch(kind, &mut t, &patch) {
            Ok(()) => panic!("expected an error, got {t}"),
            Err(e) => {
                assert_eq!(t, target, "a failed patch must leave the target untouched");
                e
            }
        }
    }

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"},
                         "annotations": {"keep": "me"}},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate",
                             "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "containers": [{
                            "name": "nginx",
                            "image": "nginx:1.27",
                            "ports": [{"containerPort": 80, "protocol": "TCP"}],
                            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                            "args": ["--x", "--y"]
                        }],
                        "tolerations": [{"key": "k1", "operator": "Exists"}]
                    }
                }
            },
            "status": {"conditions": [
                {"type": "Available", "status": "True"},
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}
            ]}
        })
    }

    fn containers(v: &Value) -> &Value {
        &v["spec"]["template"]["spec"]["containers"]
    }

    fn contains_directive(v: &Value) -> bool {
        match v {
            Value::Object(m) => m
                .iter()
                .any(|(k, v)| k.starts_with('$') || contains_directive(v)),
            Value::Array(a) => a.iter().any(contains_directive),
            _ => false,
        }
    }

    // --- strategic merge patch -------------------------------------------------------------

    #[test]
    fn kubectl_apply_body_updates_only_the_container_image() {
        let before = deployment();
        let patch = json!({
            "metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"x\":1}\n"}},
            "spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "nginx"}],
                "containers": [{"image": "nginx:1.28", "name": "nginx"}]
            }}}
        });
        let after = smp("Deployment", before.clone(), patch);
        let mut expected = before;
        expected["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:1.28");
        expected["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] =
            json!("{\"x\":1}\n");
        assert_eq!(after, expected);
        assert!(!contains_directive(&after));
    }

    #[test]
    fn cordon_sets_unschedulable_and_keeps_everything_else() {
        let node = json!({"metadata": {"name": "n1"},
            "spec": {"podCIDR": "10.0.0.0/24", "podCIDRs": ["10.0.0.0/24"],
                     "taints": [{"key": "a", "effect": "NoSchedule"}]},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.1.1.1"}]}});
        let after = smp(
            "Node",
            node.clone(),
            json!({"spec": {"unschedulable": true}}),
        );
        let mut expected = node;
        expected["spec"]["unschedulable"] = json!(true);
        assert_eq!(after, expected);
    }

    #[test]
    fn patch_delete_directive_removes_the_named_container() {
        let mut before = deployment();
        before["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .expect("containers")
            .push(json!({"name": "sidecar", "image": "busybox"}));
        let after = smp(
            "Deployment",
            before,
            json!({"spec": {"template": {"spec": {"containers": [
                {"name": "nginx", "$patch": "delete"}
            ]}}}}),
        );
        assert_eq!(
            containers(&after),
            &json!([{"name": "sidecar", "image": "busybox"}])
        );
    }

    #[test]
    fn delete_directive_element_without_merge_key_is_malformed() {
        let e = smp_err(
            "Deployment",
            deployment(),
            json!({"spec": {"template": {"spec": {"containers": [{"$patch": "delete"}]}}}}),
        );
        assert!(matches!(e, PatchError::Malformed(_)));
    }

    #[test]
    fn env_merges_by_name_updating_existing_and_appending_new() {
        let after = smp(
            "Deployment",
            deployment(),
            json!({"spec": {"template": {"spec": {"containers": [{"name": "nginx", "env": [
                {"name": "B", "value": "20"}, {"name": "C", "value": "3"}
            ]}]}}}}),
        );
        assert_eq!(
            containers(&after)[0]["env"],
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "20"},
                   {"name": "C", "value": "3"}])
        );
        assert_eq!(containers(&after)[0]["image"], json!("nginx:1.27"));
    }

    #[test]
    fn env_var_with_value_from_switch_uses_null_to_drop_value() {
        let after = smp(
            "Deployment",
            deployment(),
            json!({"spec": {"template": {"spec": {"containers": [{"name": "nginx", "env": [
                {"name": "A", "value": null,
                 "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
            ]}]}}}}),
        );
        assert_eq!(
            containers(&after)[0]["env"][0],
            json!({"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
        );
    }

    #[test]
    fn new_container_is_appended_and_existing_keeps_its_fields() {
        let after = smp(
            "Deployment",
            deployment(),
            json!({"spec": {"template": {"spec": {"containers": [
                {"name": "sidecar", "image": "busybox"}
            ]}}}}),
        );
        let c = containers(&after).as_array().expect("containers");
        assert_eq!(c.len(), 2);
        assert_eq!(c[0]["name"], json!("nginx"));
        assert_eq!(
            c[0]["ports"],
            json!([{"containerPort": 80, "protocol": "TCP"}])
        );
        assert_eq!(c[1], json!({"name": "sidecar", "image": "busybox"}));
    }

    #[test]
    fn keyed_list_element_without_merge_key_is_malformed() {
        let e = smp_err(
            "Deployment",
            deployment(),
            json!({"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}}),
        );
        assert!(matches!(e, PatchError::Malformed(_)));
    }

    #[test]
    fn keyed_list_with_scalar_elements_is_malformed() {
        let e = smp_err(
            "Deployment",
            deployment(),
            json!({"spec": {"template": {"spec": {"containers": ["nginx"]}}}}),
        );
        assert!(matches!(e, PatchError::Malformed(_)));
    }

    #[test]
    fn empty_patch_list_leaves_keyed_list_alone() {
        let before = deployment();
        let after = smp(
            "Deployment",
            before.clone(),
            json!({"spec": {"template": {"spec": {"containers": []}}}}),
        );
        assert_eq!(after, before);
    }

    #[test]
    fn finalizers_union_keeps_order_and_appends_new_values_once() {
        let obj = json!({"metadata": {"name": "x", "finalizers": ["a", "b"]}});
        let after = smp(
            "ConfigMap",
            obj,
            json!({"metadata": {"finalizers": ["b", "c", "c"]}}),
        );
        assert_eq!(after["metadata"]["finalizers"], json!(["a", "b", "c"]));
    }

    #[test]
    fn pod_cidrs_union_on_node() {
        let node = json!({"spec": {"podCIDRs": ["10.0.0.0/24"]}});
        let after = smp("Node", node, json!({"spec": {"podCIDRs": ["fd00::/64"]}}));
        assert_eq!(
            after["spec"]["podCIDRs"],
            json!(["10.0.0.0/24", "fd00::/64"])
        );
    }

    #[test]
    fn retain_keys_switching_rolling_update_to_recreate_drops_rolling_update() {
        let after = smp(
            "Deployment",
            deployment(),
            json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}),
        );
        assert_eq!(after["spec"]["strategy"], json!({"type": "Recreate"}));
    }

    #[test]
    fn retain_keys_keeps_listed_fields_not_in_patch() {
        let after = smp(
            "Deployment",
            deployment(),
            json!({"spec": {"strategy": {"$retainKeys": ["rollingUpdate", "type"],
                                         "rollingUpdate": {"maxSurge": 1}}}}),
        );
        assert_eq!(
            after["spec"]["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": "25%"}})
        );
    }

    #[test]
    fn retain_keys_rejects_a_patched_field_it_does_not_list() {
        let e = smp_err(
            "Deployment",
            deployment(),
            json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate",
                                         "rollingUpdate": {"maxSurge": 1}}}}),
        );
        assert!(matches!(e, PatchError::Malformed(_)));
    }

    #[test]
    fn retain_keys_on_volume_switches_source_type() {
        let mut before = deployment();
        before["spec"]["template"]["spec"]["volumes"] = json!([
            {"name": "data", "emptyDir": {}},
            {"name": "cfg", "configMap": {"name": "c1"}}
        ]);
        let after = smp(
            "Deployment",
            before,
            json!({"spec": {"template": {"spec": {"volumes": [
                {"name": "data", "$retainKeys": ["hostPath", "name"], "hostPath": {"path": "/d"}}
            ]}}}}),
        );
        assert_eq!(
            after["spec"]["template"]["spec"]["volumes"],
            json!([{"name": "data", "hostPath": {"path": "/d"}},
                   {"name": "cfg", "configMap": {"name": "c1"}}])
        );
    }

    #[test]
    fn delete_from_primitive_list_removes_values() {
        let obj = json!({"metadata": {"finalizers": ["a", "b", "c"]}});
        let after = smp(
            "Pod",
            obj,
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["b", "zz"]}}),
        );
        assert_eq!(after, json!({"metadata": {"finalizers": ["a", "c"]}}));
    }

    #[test]
    fn delete_from_primitive_list_on_missing_list_is_a_no_op() {
        let after = smp(
            "Pod",
            json!({"metadata": {"name": "p"}}),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["b"]}}),
        );
        assert_eq!(after, json!({"metadata": {"name": "p"}}));
    }

    #[test]
    fn delete_from_primitive_list_combined_with_additions_and_order() {
        let obj = json!({"metadata": {"finalizers": ["a", "b", "c"]}});
        let after = smp(
            "Pod",
            obj,
            json!({"metadata": {
                "$setElementOrder/finalizers": ["c", "d", "a"],
                "$deleteFromPrimitiveList/finalizers": ["b"],
                "finalizers": ["d"]
            }}),
        );
        assert_eq!(after["metadata"]["finalizers"], json!(["c", "d", "a"]));
    }

    #[test]
    fn null_deletes_keys_and_unmatched_nulls_are_not_inserted() {
        let after = smp(
            "Deployment",
            deployment(),
            json!({"metadata": {"annotations": {"keep": null, "absent": null},
                                "labels": {"new": "1"}},
                   "status": null}),
        );
        assert_eq!(after["metadata"]["annotations"], json!({}));
        assert_eq!(
            after["metadata"]["labels"],
            json!({"app": "web", "new": "1"})
        );
        assert!(after.get("status").is_none());
    }

    #[test]
    fn nulls_and_directives_inside_new_values_are_stripped() {
        let after = smp(
            "Deployment",
            deployment(),
            json!({"spec": {"template": {"spec": {
                "securityContext": {"runAsUser": 1000, "fsGroup": null, "$patch": "merge"},
                "containers": [{"name": "new", "image": "x", "resources": {"limits": null}}]
            }}}}),
        );
        let spec = &after["spec"]["template"]["spec"];
        assert_eq!(spec["securityContext"], json!({"runAsUser": 1000}));
        assert_eq!(
            spec["containers"][1],
            json!({"name": "new", "image": "x", "resources": {}})
        );
        assert!(!contains_directive(&after));
    }

    #[test]
    fn map_replace_directive_replaces_the_whole_map() {
        let after = smp(
            "Deployment",
            deployment(),
            json!({"metadata": {"labels": {"$patch": "replace", "only": "this"}}}),
        );
        assert_eq!(after["metadata"]["labels"], json!({"only": "this"}));
        assert_eq!(after["metadata"]["annotations"], json!({"keep": "me"}));
    }

    #[test]
    fn map_delete_directive_removes_the_map() {
        let after = smp(
            "Deployment",
            deployment(),
            json!({"spec": {"strategy": {"$patch": "delete"}}}),
        );
        assert!(after["spec"].get("strategy").is_none());
        assert_eq!(after["spec"]["replicas"], json!(2));
    }

    #[test]
    fn list_replace_directive_replaces_a_keyed_list() {
        let after = smp(
            "Deployment",
            deployment(),
            json!({"spec": {"template": {"spec": {"containers": [
                {"$patch": "replace"}, {"name": "only", "image": "x"}
            ]}}}}),
        );
        assert_eq!(containers(&after), &json!([{"name": "only", "image": "x"}]));
    }

    #[test]
    fn unknown_or_mistyped_directives_are_malformed() {
        let bad = [
            json!({"metadata": {"labels": {"$patch": "explode"}}}),
            json!({"metadata": {"labels": {"$patch": 1}}}),
            json!({"spec": {"template": {"spec": {"containers": [{"name": "nginx", "$patch": "bogus"}]}}}}),
            json!({"spec": {"template": {"spec": {"containers": [{"name": "nginx", "$patch": "merge"}]}}}}),
            json!({"spec": {"strategy": {"$retainKeys": "type"}}}),
            json!({"spec": {"strategy": {"$retainKeys": [1]}}}),
            json!({"spec": {"template": {"spec": {"$setElementOrder/containers": {"name": "nginx"}}}}}),
            json!({"spec": {"template": {"spec": {"$setElementOrder/containers": ["nginx"]}}}}),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": "a"}}),
        ];
        for patch in bad {
            let e = smp_err("Deployment", deployment(), patch.clone());
            assert!(matches!(e, PatchError::Malformed(_)), "{patch}: {e:?}");
        }
    }

    #[test]
    fn non_object_strategic_patch_is_malformed() {
        for patch in [json!([]), json!("x"), json!(null), json!(3)] {
            let e = smp_err("Deployment", deployment(), patch);
            assert!(matches!(e, PatchError::Malformed(_)));
        }
    }

    #[test]
    fn set_element_order_reorders_containers() {
        let mut before = deployment();
        before["spec"]["template"]["spec"]["containers"] = json!([
            {"name": "a", "image": "a"}, {"name": "b", "image": "b"}, {"name": "c", "image": "c"}
        ]);
        let after = smp(
            "Deployment",
            before,
            json!({"spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "c"}, {"name": "a"}, {"name": "b"}]
            }}}}),
        );
        let names: Vec<_> = containers(&after)
            .as_array()
            .expect("containers")
            .iter()
            .map(|c| c["name"].clone())
            .collect();
        assert_eq!(names, vec![json!("c"), json!("a"), json!("b")]);
    }

    #[test]
    fn set_element_order_places_new_element_and_keeps_unmentioned_live_ones() {
        let mut before = deployment();
        before["spec"]["template"]["spec"]["containers"] = json!([
            {"name": "a", "image": "a"}, {"name": "b", "image": "b"}
        ]);
        // `b` was added by someone else (not in the applied config): it stays, after `a`.
        let after = smp(
            "Deployment",
            before,
            json!({"spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "new"}, {"name": "a"}],
                "containers": [{"name": "new", "image": "n"}]
            }}}}),
        );
        let names: Vec<_> = containers(&after)
            .as_array()
            .expect("containers")
            .iter()
            .map(|c| c["name"].clone())
            .collect();
        assert_eq!(names, vec![json!("new"), json!("a"), json!("b")]);
    }

    #[test]
    fn set_element_order_inconsistent_with_patch_list_is_malformed() {
        let e = smp_err(
            "Deployment",
            deployment(),
            json!({"spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "nginx"}],
                "containers": [{"name": "other", "image": "x"}]
            }}}}),
        );
        assert!(matches!(e, PatchError::Malformed(_)));
    }

    #[test]
    fn set_element_order_for_primitive_list() {
        let after = smp(
            "Pod",
            json!({"metadata": {"finalizers": ["a", "b"]}}),
            json!({"metadata": {"$setElementOrder/finalizers": ["b", "c", "a"], "finalizers": ["c"]}}),
        );
        assert_eq!(after, json!({"metadata": {"finalizers": ["b", "c", "a"]}}));
    }

    #[test]
    fn container_ports_merge_by_container_port_but_service_ports_by_port() {
        let after = smp(
            "Deployment",
            deployment(),
            json!({"spec": {"template": {"spec": {"containers": [{"name": "nginx", "ports": [
                {"containerPort": 80, "name": "http"}, {"containerPort": 443}
            ]}]}}}}),
        );
        assert_eq!(
            containers(&after)[0]["ports"],
            json!([{"containerPort": 80, "protocol": "TCP", "name": "http"}, {"containerPort": 443}])
        );

        let svc = json!({"spec": {"ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}});
        let after = smp(
            "Service",
            svc,
            json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}, {"port": 443}]}}),
        );
        assert_eq!(
            after["spec"]["ports"],
            json!([{"port": 80, "targetPort": 9090, "protocol": "TCP"}, {"port": 443}])
        );
    }

    #[test]
    fn tolerations_and_args_are_replaced_whole() {
        let after = smp(
            "Deployment",
            deployment(),
            json!({"spec": {"template": {"spec": {
                "tolerations": [{"key": "k2", "operator": "Exists"}],
                "containers": [{"name": "nginx", "args": ["--z"]}]
            }}}}),
        );
        assert_eq!(
            after["spec"]["template"]["spec"]["tolerations"],
            json!([{"key": "k2", "operator": "Exists"}])
        );
        assert_eq!(containers(&after)[0]["args"], json!(["--z"]));
    }

    #[test]
    fn status_conditions_merge_by_type() {
        let after = smp(
            "Deployment",
            deployment(),
            json!({"status": {"conditions": [{"type": "Progressing", "status": "False"},
                                             {"type": "ReplicaFailure", "status": "True"}]}}),
        );
        assert_eq!(
            after["status"]["conditions"],
            json!([
                {"type": "Available", "status": "True"},
                {"type": "Progressing", "status": "False", "reason": "NewReplicaSetAvailable"},
                {"type": "ReplicaFailure", "status": "True"}
            ])
        );
    }

    #[test]
    fn node_status_addresses_merge_by_type() {
        let node = json!({"status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"},
                                                   {"type": "Hostname", "address": "n1"}]}});
        let after = smp(
            "Node",
            node,
            json!({"status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.2"}]}}),
        );
        assert_eq!(
            after["status"]["addresses"],
            json!([{"type": "InternalIP", "address": "10.0.0.2"}, {"type": "Hostname", "address": "n1"}])
        );
    }

    #[test]
    fn owner_references_merge_by_uid() {
        let obj = json!({"metadata": {"ownerReferences": [{"uid": "u1", "name": "a", "kind": "ReplicaSet"}]}});
        let after = smp(
            "Pod",
            obj,
            json!({"metadata": {"ownerReferences": [{"uid": "u1", "controller": true},
                                                     {"uid": "u2", "name": "b"}]}}),
        );
        assert_eq!(
            after["metadata"]["ownerReferences"],
            json!([{"uid": "u1", "name": "a", "kind": "ReplicaSet", "controller": true},
                   {"uid": "u2", "name": "b"}])
        );
    }

    #[test]
    fn pod_spec_at_the_pod_root_and_in_cronjob_templates_merge_containers() {
        let pod = json!({"spec": {"containers": [{"name": "c", "image": "1", "env": [{"name": "A", "value": "1"}]}]}});
        let after = smp(
            "Pod",
            pod,
            json!({"spec": {"containers": [{"name": "c", "env": [{"name": "B", "value": "2"}]}]}}),
        );
        assert_eq!(
            after["spec"]["containers"],
            json!([{"name": "c", "image": "1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}])
        );

        let cj = json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": [
            {"name": "c", "image": "1"}]}}}}}});
        let after = smp(
            "CronJob",
            cj,
            json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": [
                {"name": "c", "image": "2"}]}}}}}}),
        );
        assert_eq!(
            after["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"],
            json!([{"name": "c", "image": "2"}])
        );
    }

    #[test]
    fn unknown_kind_replaces_all_lists() {
        let obj =
            json!({"spec": {"containers": [{"name": "a"}]}, "metadata": {"finalizers": ["x"]}});
        let after = smp(
            "Widget",
            obj,
            json!({"spec": {"containers": [{"name": "b"}]}, "metadata": {"finalizers": ["y"]}}),
        );
        assert_eq!(
            after,
            json!({"spec": {"containers": [{"name": "b"}]}, "metadata": {"finalizers": ["y"]}})
        );
    }

    #[test]
    fn non_object_target_is_treated_as_empty() {
        let mut target = json!(null);
        let patch = json!({"metadata": {"name": "x"}});
        assert_eq!(strategic_merge_patch("Pod", &mut target, &patch), Ok(()));
        assert_eq!(target, json!({"metadata": {"name": "x"}}));
    }

    #[test]
    fn type_change_replaces_the_value() {
        let after = smp(
            "ConfigMap",
            json!({"data": {"a": "1"}}),
            json!({"data": "oops", "binaryData": {"b": "Zg=="}}),
        );
        assert_eq!(after, json!({"data": "oops", "binaryData": {"b": "Zg=="}}));
    }

    #[test]
    fn list_strategy_table() {
        use ListStrategy::*;
        let tpl = ["spec", "template", "spec"];
        for kind in [
            "Deployment",
            "ReplicaSet",
            "StatefulSet",
            "DaemonSet",
            "Job",
            "ReplicationController",
        ] {
            let at = |rest: &[&'static str]| {
                let mut p: Vec<&str> = tpl.to_vec();
                p.extend_from_slice(rest);
                list_strategy(kind, &p)
            };
            assert_eq!(at(&["containers"]), MergeByKey("name"), "{kind}");
            assert_eq!(at(&["initContainers", "env"]), MergeByKey("name"));
            assert_eq!(at(&["containers", "volumeMounts"]), MergeByKey("mountPath"));
            assert_eq!(
                at(&["containers", "volumeDevices"]),
                MergeByKey("devicePath")
            );
            assert_eq!(at(&["containers", "ports"]), MergeByKey("containerPort"));
            assert_eq!(at(&["containers", "args"]), Replace);
            assert_eq!(at(&["containers", "command"]), Replace);
            assert_eq!(at(&["containers", "envFrom"]), Replace);
            assert_eq!(at(&["volumes"]), MergeByKey("name"));
            assert_eq!(at(&["imagePullSecrets"]), MergeByKey("name"));
            assert_eq!(at(&["hostAliases"]), MergeByKey("ip"));
            assert_eq!(
                at(&["topologySpreadConstraints"]),
                MergeByKey("topologyKey")
            );
            assert_eq!(at(&["schedulingGates"]), MergeByKey("name"));
            assert_eq!(at(&["resourceClaims"]), MergeByKey("name"));
            assert_eq!(at(&["tolerations"]), Replace);
            assert_eq!(
                list_strategy(kind, &["status", "conditions"]),
                MergeByKey("type")
            );
            assert_eq!(
                list_strategy(kind, &["spec", "template", "metadata", "finalizers"]),
                PrimitiveUnion
            );
        }
        assert_eq!(
            list_strategy("Pod", &["spec", "ephemeralContainers"]),
            MergeByKey("name")
        );
        assert_eq!(
            list_strategy("Pod", &["spec", "containers", "ports"]),
            MergeByKey("containerPort")
        );
        assert_eq!(
            list_strategy("Pod", &["status", "podIPs"]),
            MergeByKey("ip")
        );
        assert_eq!(
            list_strategy("Pod", &["status", "hostIPs"]),
            MergeByKey("ip")
        );
        assert_eq!(
            list_strategy("Pod", &["status", "containerStatuses"]),
            Replace
        );
        assert_eq!(
            list_strategy("PodTemplate", &["template", "spec", "containers"]),
            MergeByKey("name")
        );
        assert_eq!(
            list_strategy(
                "CronJob",
                &[
                    "spec",
                    "jobTemplate",
                    "spec",
                    "template",
                    "spec",
                    "containers",
                    "env"
                ]
            ),
            MergeByKey("name")
        );
        assert_eq!(
            list_strategy("Service", &["spec", "ports"]),
            MergeByKey("port")
        );
        assert_eq!(
            list_strategy("Service", &["status", "conditions"]),
            MergeByKey("type")
        );
        assert_eq!(
            list_strategy("ServiceAccount", &["secrets"]),
            MergeByKey("name")
        );
        assert_eq!(
            list_strategy("ServiceAccount", &["imagePullSecrets"]),
            Replace
        );
        assert_eq!(
            list_strategy("Node", &["status", "addresses"]),
            MergeByKey("type")
        );
        assert_eq!(list_strategy("Node", &["spec", "podCIDRs"]), PrimitiveUnion);
        assert_eq!(list_strategy("Node", &["spec", "taints"]), Replace);
        assert_eq!(list_strategy("Namespace", &["spec", "finalizers"]), Replace);
        assert_eq!(
            list_strategy("Secret", &["metadata", "finalizers"]),
            PrimitiveUnion
        );
        assert_eq!(
            list_strategy("Secret", &["metadata", "ownerReferences"]),
            MergeByKey("uid")
        );
        assert_eq!(list_strategy("Deployment", &["spec", "ports"]), Replace);
        assert_eq!(list_strategy("Widget", &["status", "conditions"]), Replace);
        assert_eq!(
            list_strategy("Widget", &["metadata", "finalizers"]),
            Replace
        );
        assert_eq!(list_strategy("Pod", &[]), Replace);
    }

    #[test]
    fn deeply_odd_inputs_do_not_panic() {
        let patches = [
            json!({"spec": {"template": {"spec": {"containers": [{"name": null}, {"name": {"x": 1}}]}}}}),
            json!({"spec": {"template": {"spec": {"containers": [[1], 2]}}}}),
            json!({"$setElementOrder/": [], "$deleteFromPrimitiveList/": [], "$retainKeys": []}),
            json!({"metadata": {"finalizers": [{"$patch": "replace"}, "a", "a", {"k": 1}]}}),
            json!({"spec": {"template": {"spec": {"tolerations": [{"$patch": "delete"}, {"$patch": "replace"}]}}}}),
            json!({"$patch": "delete"}),
            json!({"$patch": "replace", "kind": "X"}),
        ];
        for patch in patches {
            let mut t = deployment();
            let _ = strategic_merge_patch("Deployment", &mut t, &patch);
            let mut t = json!([1, 2]);
            let _ = strategic_merge_patch("Deployment", &mut t, &patch);
        }
        let mut t = deployment();
        assert_eq!(
            strategic_merge_patch("Deployment", &mut t, &json!({"$patch": "delete"})),
            Ok(())
        );
        assert_eq!(t, json!({}));
    }

    // --- JSON merge patch ------------------------------------------------------------------

    #[test]
    fn merge_patch_replaces_lists_whole() {
        let mut target = deployment();
        merge_patch(
            &mut target,
            &json!({"spec": {"template": {"spec": {"containers": [{"name": "other"}]}}}}),
        );
        assert_eq!(containers(&target), &json!([{"name": "other"}]));
        assert_eq!(target["spec"]["replicas"], json!(2));
    }

    #[test]
    fn merge_patch_null_deletes_and_objects_merge_recursively() {
        let mut target = json!({"a": {"b": 1, "c": 2}, "d": 3});
        merge_patch(
            &mut target,
            &json!({"a": {"b": null, "e": {"f": null, "g": 1}}, "d": null}),
        );
        assert_eq!(target, json!({"a": {"c": 2, "e": {"g": 1}}}));
    }

    #[test]
    fn merge_patch_with_non_object_patch_replaces_target() {
        let mut target = json!({"a": 1});
        merge_patch(&mut target, &json!(["x"]));
        assert_eq!(target, json!(["x"]));
        let mut target = json!("scalar");
        merge_patch(&mut target, &json!({"a": {"b": 1}}));
        assert_eq!(target, json!({"a": {"b": 1}}));
    }

    #[test]
    fn merge_patch_keeps_directive_looking_keys_literally() {
        let mut target = json!({});
        merge_patch(&mut target, &json!({"$patch": "delete"}));
        assert_eq!(target, json!({"$patch": "delete"}));
    }

    // --- JSON patch ------------------------------------------------------------------------

    #[test]
    fn json_patch_add_remove_replace() {
        let mut target = deployment();
        let patch = json!([
            {"op": "replace", "path": "/spec/replicas", "value": 5},
            {"op": "add", "path": "/metadata/labels/tier", "value": "fe"},
            {"op": "remove", "path": "/metadata/annotations/keep"},
            {"op": "add", "path": "/spec/template/spec/containers/-", "value": {"name": "s"}},
            {"op": "test", "path": "/spec/replicas", "value": 5}
        ]);
        assert_eq!(json_patch(&mut target, &patch), Ok(()));
        assert_eq!(target["spec"]["replicas"], json!(5));
        assert_eq!(target["metadata"]["labels"]["tier"], json!("fe"));
        assert_eq!(target["metadata"]["annotations"], json!({}));
        assert_eq!(containers(&target)[1], json!({"name": "s"}));
    }

    #[test]
    fn json_patch_test_failure_is_failed_and_leaves_target_untouched() {
        let before = deployment();
        let mut target = before.clone();
        let patch = json!([
            {"op": "replace", "path": "/spec/replicas", "value": 9},
            {"op": "test", "path": "/spec/replicas", "value": 3}
        ]);
        assert!(matches!(
            json_patch(&mut target, &patch),
            Err(PatchError::Failed(_))
        ));
        assert_eq!(target, before);
    }

    #[test]
    fn json_patch_missing_path_is_failed() {
        let mut target = deployment();
        let patch = json!([{"op": "remove", "path": "/spec/nope"}]);
        assert!(matches!(
            json_patch(&mut target, &patch),
            Err(PatchError::Failed(_))
        ));
        let patch = json!([{"op": "replace", "path": "/a/b/c", "value": 1}]);
        assert!(matches!(
            json_patch(&mut target, &patch),
            Err(PatchError::Failed(_))
        ));
    }

    #[test]
    fn json_patch_malformed_documents_are_malformed() {
        let bad = [
            json!({"op": "add", "path": "/a", "value": 1}),
            json!("nope"),
            json!([{"op": "frobnicate", "path": "/a"}]),
            json!([{"op": "add", "value": 1}]),
            json!([{"op": "add", "path": "no-leading-slash", "value": 1}]),
            json!([{"op": "move", "path": "/a"}]),
            json!([42]),
        ];
        for patch in bad {
            let mut target = json!({"a": 1});
            let r = json_patch(&mut target, &patch);
            assert!(matches!(r, Err(PatchError::Malformed(_))), "{patch}: {r:?}");
            assert_eq!(target, json!({"a": 1}));
        }
    }

    #[test]
    fn json_patch_move_to_parent_then_failure_does_not_panic() {
        // json_patch::patch's rollback panics on this sequence; we must just report Failed.
        let mut target = json!({"a": {"b": 1}});
        let patch = json!([
            {"op": "move", "from": "/a/b", "path": "/a"},
            {"op": "test", "path": "/zzz", "value": 1}
        ]);
        assert!(matches!(
            json_patch(&mut target, &patch),
            Err(PatchError::Failed(_))
        ));
        assert_eq!(target, json!({"a": {"b": 1}}));
    }

    #[test]
    fn json_patch_edge_indices_do_not_panic() {
        let patches = [
            json!([{"op": "remove", "path": "/arr/-"}]),
            json!([{"op": "move", "from": "/arr/-", "path": "/x"}]),
            json!([{"op": "add", "path": "/arr/99", "value": 1}]),
            json!([{"op": "copy", "from": "/arr/0", "path": "/arr/-"},
                   {"op": "test", "path": "/q", "value": 0}]),
            json!([{"op": "remove", "path": ""}]),
            json!([{"op": "add", "path": "", "value": 7}]),
        ];
        for patch in patches {
            let mut target = json!({"arr": []});
            let _ = json_patch(&mut target, &patch);
        }
        let mut target = json!({"arr": []});
        assert_eq!(
            json_patch(&mut target, &json!([{"op": "add", "path": "", "value": 7}])),
            Ok(())
        );
        assert_eq!(target, json!(7));
    }

    #[test]
    fn patch_error_display_names_the_problem() {
        assert_eq!(
            PatchError::Malformed("x".into()).to_string(),
            "malformed patch: x"
        );
        assert_eq!(
            PatchError::Failed("y".into()).to_string(),
            "patch could not be applied: y"
        );
    }
}
