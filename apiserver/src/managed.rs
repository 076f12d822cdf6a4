//! Server-side apply and `metadata.managedFields` bookkeeping, in the spirit of
//! Kubernetes' structured-merge-diff: field sets in FieldsV1 form, ownership per
//! field manager, conflicts between managers, and pruning of fields an applier
//! stopped applying.
//!
//! Objects are `serde_json::Value`s in their JSON wire form. List semantics come
//! from `crate::patch::list_strategy`; without a schema every field of a map is
//! treated as a struct field, and leaves are scalars, nulls, empty maps, empty
//! lists and atomic lists.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::patch::{list_strategy, ListStrategy};

const APPLY: &str = "Apply";
const UPDATE: &str = "Update";
/// Upstream's owner of every field of an object that had no managedFields when first applied.
pub const BEFORE_FIRST_APPLY: &str = "before-first-apply";
/// Upstream's bucket for the oldest Update entries beyond the cap.
pub const ANCIENT_CHANGES: &str = "ancient-changes";
/// Upstream keeps at most this many Update entries.
const MAX_UPDATE_MANAGERS: usize = 10;
/// The only metadata fields that can be owned.
const OWNED_METADATA: [&str; 4] = ["labels", "annotations", "finalizers", "ownerReferences"];
/// Guards recursion on hostile FieldsV1 input.
const MAX_DEPTH: usize = 256;

// ---------------------------------------------------------------------------
// Field sets
// ---------------------------------------------------------------------------

/// A set of field paths in managedFields' FieldsV1 form.
///
/// Path elements are kept encoded as in FieldsV1: `f:<field>`, `k:<json object>`
/// (list element by key), `v:<json value>` (set element), `i:<index>`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSet {
    root: Node,
}

/// A trie node: `member` says the path ending here is in the set itself (the
/// FieldsV1 "." entry when it also has children). Empty nodes are never kept,
/// so derived equality is set equality.
#[derive(Debug, Clone, Default, PartialEq)]
struct Node {
    member: bool,
    children: BTreeMap<String, Node>,
}

impl Node {
    fn is_empty(&self) -> bool {
        !self.member && self.children.is_empty()
    }

    fn insert(&mut self, path: &[String]) {
        if path.is_empty() {
            return;
        }
        let mut n = self;
        for e in path {
            n = n.children.entry(e.clone()).or_default();
        }
        n.member = true;
    }

    fn get(&self, path: &[String]) -> Option<&Node> {
        let mut n = self;
        for e in path {
            n = n.children.get(e)?;
        }
        Some(n)
    }

    fn union_in(&mut self, o: &Node) {
        self.member |= o.member;
        for (k, c) in &o.children {
            self.children.entry(k.clone()).or_default().union_in(c);
        }
    }

    fn difference(&self, o: &Node) -> Node {
        let mut children = BTreeMap::new();
        for (k, c) in &self.children {
            let d = match o.children.get(k) {
                Some(oc) => c.difference(oc),
                None => c.clone(),
            };
            if !d.is_empty() {
                children.insert(k.clone(), d);
            }
        }
        Node { member: self.member && !o.member, children }
    }

    fn intersection(&self, o: &Node) -> Node {
        let mut children = BTreeMap::new();
        for (k, c) in &self.children {
            if let Some(oc) = o.children.get(k) {
                let i = c.intersection(oc);
                if !i.is_empty() {
                    children.insert(k.clone(), i);
                }
            }
        }
        Node { member: self.member && o.member, children }
    }

    fn prune(&mut self) {
        self.children.retain(|_, c| {
            c.prune();
            !c.is_empty()
        });
    }

    /// Member paths, upstream's order: a node's members before its subtrees.
    fn collect(&self, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        for (k, c) in &self.children {
            if c.member {
                let mut p = prefix.clone();
                p.push(k.clone());
                out.push(p);
            }
        }
        for (k, c) in &self.children {
            if !c.children.is_empty() {
                prefix.push(k.clone());
                c.collect(prefix, out);
                prefix.pop();
            }
        }
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".to_string(), Value::Object(Map::new()));
        }
        for (k, c) in &self.children {
            m.insert(k.clone(), c.to_json());
        }
        Value::Object(m)
    }

    fn parse(&mut self, m: &Map<String, Value>, depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        for (k, v) in m {
            if k == "." {
                if v.is_object() {
                    self.member = true;
                }
                continue;
            }
            let (Some(pe), Some(cm)) = (canonical_element(k), v.as_object()) else {
                continue;
            };
            let child = self.children.entry(pe).or_default();
            if cm.is_empty() {
                child.member = true;
            } else {
                child.parse(cm, depth + 1);
            }
        }
    }
}

impl FieldSet {
    /// Leaf fields set in `obj`; `kind` decides list semantics.
    ///
    /// With `ignore_status` (writes to the main resource) everything but `status`
    /// counts; without it (writes to the status subresource) only `status` does.
    /// `apiVersion`, `kind` and server-maintained metadata are never owned; of
    /// metadata only labels, annotations, finalizers and ownerReferences count.
    pub fn from_object(kind: &str, obj: &Value, ignore_status: bool) -> FieldSet {
        let mut root = Node::default();
        let Some(m) = obj.as_object() else {
            return FieldSet::default();
        };
        for (k, v) in m {
            match (k.as_str(), ignore_status) {
                ("apiVersion" | "kind", _) => {}
                ("metadata", true) => {
                    let Some(meta) = v.as_object() else { continue };
                    for f in OWNED_METADATA {
                        if let Some(c) = meta.get(f) {
                            let mut names = vec!["metadata", f];
                            let mut path = vec!["f:metadata".to_string(), format!("f:{f}")];
                            walk(kind, &mut names, &mut path, c, &mut root);
                        }
                    }
                }
                // Status is skipped on main writes, everything else on status writes.
                _ if (k == "status") == ignore_status => {}
                _ => {
                    let mut names = vec![k.as_str()];
                    let mut path = vec![format!("f:{k}")];
                    walk(kind, &mut names, &mut path, v, &mut root);
                }
            }
        }
        FieldSet { root }
    }

    /// The FieldsV1 JSON form, with "." for nodes that are members and have children.
    pub fn to_fields_v1(&self) -> Value {
        self.root.to_json()
    }

    /// Parses FieldsV1; anything malformed is skipped, so garbage yields an empty set.
    pub fn from_fields_v1(v: &Value) -> FieldSet {
        let mut root = Node::default();
        if let Some(m) = v.as_object() {
            root.parse(m, 0);
        }
        root.member = false;
        root.prune();
        FieldSet { root }
    }

    pub fn union(&self, other: &FieldSet) -> FieldSet {
        let mut root = self.root.clone();
        root.union_in(&other.root);
        FieldSet { root }
    }

    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        FieldSet { root: self.root.difference(&other.root) }
    }

    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        FieldSet { root: self.root.intersection(&other.root) }
    }

    pub fn is_empty(&self) -> bool {
        self.root.children.is_empty()
    }

    /// Number of member paths.
    pub fn len(&self) -> usize {
        self.members().len()
    }

    /// Adds a path of FieldsV1 elements (e.g. `["f:spec", "f:replicas"]`).
    /// Returns false, adding nothing, if an element is malformed or the path is empty.
    pub fn insert(&mut self, path: &[&str]) -> bool {
        match canonical_path(path) {
            Some(p) if !p.is_empty() => {
                self.root.insert(&p);
                true
            }
            _ => false,
        }
    }

    /// Whether the path of FieldsV1 elements is a member.
    pub fn contains(&self, path: &[&str]) -> bool {
        canonical_path(path)
            .filter(|p| !p.is_empty())
            .and_then(|p| self.root.get(&p).map(|n| n.member))
            .unwrap_or(false)
    }

    /// Member paths printed as upstream prints them in conflicts, e.g.
    /// `.spec.replicas` or `.spec.containers[name="nginx"].image`.
    pub fn iter(&self) -> std::vec::IntoIter<String> {
        self.members().iter().map(|p| print_path(p)).collect::<Vec<_>>().into_iter()
    }

    fn members(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        self.root.collect(&mut Vec::new(), &mut out);
        out
    }

    fn has_member(&self, path: &[String]) -> bool {
        self.root.get(path).is_some_and(|n| n.member)
    }
}

fn canonical_path(path: &[&str]) -> Option<Vec<String>> {
    path.iter().map(|e| canonical_element(e)).collect()
}

/// Validates one FieldsV1 element and normalises its JSON part so that equal
/// elements compare equal however they were spelled.
fn canonical_element(e: &str) -> Option<String> {
    if e.starts_with("f:") {
        return Some(e.to_string());
    }
    if let Some(k) = e.strip_prefix("k:") {
        let m: Map<String, Value> = serde_json::from_str(k).ok()?;
        if m.is_empty() {
            return None;
        }
        return Some(format!("k:{}", encode_key_object(m.iter())));
    }
    if let Some(v) = e.strip_prefix("v:") {
        let v: Value = serde_json::from_str(v).ok()?;
        return Some(format!("v:{v}"));
    }
    if let Some(i) = e.strip_prefix("i:") {
        return i.parse::<u64>().ok().map(|i| format!("i:{i}"));
    }
    None
}

/// `{"a":1,"b":"x"}` with keys sorted, independent of serde_json's map order.
fn encode_key_object<'a>(pairs: impl Iterator<Item = (&'a String, &'a Value)>) -> String {
    let mut pairs: Vec<_> = pairs.collect();
    pairs.sort_by(|a, b| a.0.cmp(b.0));
    let body: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}:{}", Value::String((*k).clone()), v))
        .collect();
    format!("{{{}}}", body.join(","))
}

fn print_path(path: &[String]) -> String {
    let mut s = String::new();
    for e in path {
        if let Some(f) = e.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = e.strip_prefix("k:") {
            let parts = match serde_json::from_str::<Map<String, Value>>(k) {
                Ok(m) => m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
                Err(_) => k.to_string(),
            };
            s.push_str(&format!("[{parts}]"));
        } else if let Some(v) = e.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        } else if let Some(i) = e.strip_prefix("i:") {
            s.push_str(&format!("[{i}]"));
        }
    }
    s
}

// ---------------------------------------------------------------------------
// Walking objects
// ---------------------------------------------------------------------------

/// List semantics; metadata lists are fixed by ObjectMeta for every kind,
/// custom resources included.
fn strategy(kind: &str, names: &[&str]) -> ListStrategy {
    match names {
        ["metadata", "finalizers"] => ListStrategy::PrimitiveUnion,
        ["metadata", "ownerReferences"] => ListStrategy::MergeByKey("uid"),
        _ => list_strategy(kind, names),
    }
}

/// The `k:` element of a keyed list item, if it has a scalar key.
fn element_key(elem: &Value, key: &str) -> Option<String> {
    let v = elem.as_object()?.get(key)?;
    match v {
        Value::String(_) | Value::Number(_) | Value::Bool(_) => {
            Some(format!("k:{{{}:{}}}", Value::String(key.to_string()), v))
        }
        _ => None,
    }
}

/// Keys of every item, or None if one lacks a key or keys repeat: such a list
/// cannot be merged by key and is treated as atomic.
fn keyed_elements(list: &[Value], key: &str) -> Option<Vec<String>> {
    let mut keys = Vec::with_capacity(list.len());
    for e in list {
        let k = element_key(e, key)?;
        if keys.contains(&k) {
            return None;
        }
        keys.push(k);
    }
    Some(keys)
}

fn walk<'a>(kind: &str, names: &mut Vec<&'a str>, path: &mut Vec<String>, v: &'a Value, out: &mut Node) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, c) in m {
                names.push(k);
                path.push(format!("f:{k}"));
                walk(kind, names, path, c, out);
                path.pop();
                names.pop();
            }
        }
        Value::Array(a) => walk_list(kind, names, path, a, out),
        _ => out.insert(path),
    }
}

fn walk_list<'a>(kind: &str, names: &mut Vec<&'a str>, path: &mut Vec<String>, a: &'a [Value], out: &mut Node) {
    // An empty list is a leaf, so an applier owns "no items" and can prune it later.
    if a.is_empty() {
        out.insert(path);
        return;
    }
    #[allow(unreachable_patterns)]
    match strategy(kind, names) {
        ListStrategy::PrimitiveUnion => {
            for e in a {
                path.push(format!("v:{e}"));
                out.insert(path);
                path.pop();
            }
        }
        ListStrategy::MergeByKey(key) => match keyed_elements(a, key) {
            None => out.insert(path),
            Some(keys) => {
                for (e, k) in a.iter().zip(keys) {
                    path.push(k);
                    out.insert(path);
                    if let Some(m) = e.as_object() {
                        for (f, c) in m {
                            names.push(f);
                            path.push(format!("f:{f}"));
                            walk(kind, names, path, c, out);
                            path.pop();
                            names.pop();
                        }
                    }
                    path.pop();
                }
            }
        },
        _ => out.insert(path),
    }
}

/// Index of the list item an encoded element names.
fn find_index(a: &[Value], e: &str) -> Option<usize> {
    if let Some(k) = e.strip_prefix("k:") {
        let keys: Map<String, Value> = serde_json::from_str(k).ok()?;
        if keys.is_empty() {
            return None;
        }
        return a.iter().position(|x| {
            x.as_object()
                .is_some_and(|o| keys.iter().all(|(kk, kv)| o.get(kk) == Some(kv)))
        });
    }
    if let Some(j) = e.strip_prefix("v:") {
        let val: Value = serde_json::from_str(j).ok()?;
        return a.iter().position(|x| *x == val);
    }
    if let Some(i) = e.strip_prefix("i:") {
        return i.parse::<usize>().ok().filter(|i| *i < a.len());
    }
    None
}

fn lookup<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = v;
    for e in path {
        cur = match e.strip_prefix("f:") {
            Some(f) => cur.as_object()?.get(f)?,
            None => {
                let a = cur.as_array()?;
                a.get(find_index(a, e)?)?
            }
        };
    }
    Some(cur)
}

fn lookup_mut<'a>(v: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut cur = v;
    for e in path {
        cur = match e.strip_prefix("f:") {
            Some(f) => cur.as_object_mut()?.get_mut(f)?,
            None => {
                let a = cur.as_array_mut()?;
                let i = find_index(a, e)?;
                a.get_mut(i)?
            }
        };
    }
    Some(cur)
}

fn remove_path(obj: &mut Value, path: &[String]) -> bool {
    let Some((last, parent)) = path.split_last() else {
        return false;
    };
    let Some(p) = lookup_mut(obj, parent) else {
        return false;
    };
    if let Some(f) = last.strip_prefix("f:") {
        return p.as_object_mut().is_some_and(|m| m.remove(f).is_some());
    }
    let Some(a) = p.as_array_mut() else {
        return false;
    };
    match find_index(a, last) {
        Some(i) => {
            a.remove(i);
            true
        }
        None => false,
    }
}

/// Removes a pruned field, then the maps and lists it left empty unless someone
/// owns them; top-level fields (spec, metadata, ...) always stay.
fn prune_path(obj: &mut Value, path: &[String], keep: &FieldSet) {
    if !remove_path(obj, path) {
        return;
    }
    for len in (2..path.len()).rev() {
        let anc = &path[..len];
        let emptied = match lookup(obj, anc) {
            Some(Value::Object(m)) => m.is_empty(),
            Some(Value::Array(a)) => a.is_empty(),
            _ => false,
        };
        if !emptied || keep.has_member(anc) || !remove_path(obj, anc) {
            break;
        }
    }
}

/// Fields that differ between two objects: (added or modified, removed).
fn compare(kind: &str, old: &Value, new: &Value, ignore_status: bool) -> (FieldSet, FieldSet) {
    let os = FieldSet::from_object(kind, old, ignore_status);
    let ns = FieldSet::from_object(kind, new, ignore_status);
    let removed = os.difference(&ns);
    let mut changed = ns.difference(&os);
    for p in os.intersection(&ns).members() {
        // Nodes with children (list items) are compared through their children.
        let leaf = |s: &FieldSet| s.root.get(&p).is_none_or(|n| n.children.is_empty());
        if (leaf(&os) || leaf(&ns)) && lookup(old, &p) != lookup(new, &p) {
            changed.root.insert(&p);
        }
    }
    (changed, removed)
}

// ---------------------------------------------------------------------------
// Merging an applied configuration
// ---------------------------------------------------------------------------

fn merge_top(kind: &str, live: &Value, applied: &Value, ignore_status: bool) -> Value {
    let mut out = live.clone();
    if !out.is_object() {
        out = Value::Object(Map::new());
    }
    let (Some(om), Some(am)) = (out.as_object_mut(), applied.as_object()) else {
        return out;
    };
    for (k, av) in am {
        match k.as_str() {
            "apiVersion" | "kind" if av.is_string() => {
                om.insert(k.clone(), av.clone());
            }
            "metadata" if ignore_status => merge_metadata(kind, om, av),
            "apiVersion" | "kind" | "metadata" => {}
            _ if (k == "status") != ignore_status => merge_field(kind, &mut vec![k.as_str()], om, k, av),
            _ => {}
        }
    }
    out
}

fn merge_metadata(kind: &str, obj: &mut Map<String, Value>, applied_meta: &Value) {
    let Some(am) = applied_meta.as_object() else { return };
    let meta = obj.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    let Some(mm) = meta.as_object_mut() else { return };
    for (k, v) in am {
        match k.as_str() {
            "labels" | "annotations" | "finalizers" | "ownerReferences" => {
                merge_field(kind, &mut vec!["metadata", k.as_str()], mm, k, v)
            }
            // Identity is only taken on create; never owned, never changed by apply.
            "name" | "namespace" | "generateName" if v.is_string() && !mm.contains_key(k) => {
                mm.insert(k.clone(), v.clone());
            }
            _ => {}
        }
    }
}

/// A null in the configuration removes the field, as decoding into typed objects does upstream.
fn merge_field<'a>(kind: &str, names: &mut Vec<&'a str>, parent: &mut Map<String, Value>, key: &str, av: &'a Value) {
    if av.is_null() {
        parent.remove(key);
        return;
    }
    match parent.get_mut(key) {
        Some(t) => merge_into(kind, names, t, av),
        None => {
            let mut t = Value::Null;
            merge_into(kind, names, &mut t, av);
            parent.insert(key.to_string(), t);
        }
    }
}

fn merge_into<'a>(kind: &str, names: &mut Vec<&'a str>, target: &mut Value, av: &'a Value) {
    match av {
        Value::Object(am) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let Some(tm) = target.as_object_mut() else { return };
            for (k, v) in am {
                names.push(k);
                merge_field(kind, names, tm, k, v);
                names.pop();
            }
        }
        Value::Array(aa) => merge_list(kind, names, target, aa),
        _ => *target = av.clone(),
    }
}

/// Keyed lists merge item by item (live order, new items appended in applied
/// order), sets union, atomic lists are replaced.
fn merge_list<'a>(kind: &str, names: &mut Vec<&'a str>, target: &mut Value, aa: &'a [Value]) {
    #[allow(unreachable_patterns)]
    match strategy(kind, names) {
        ListStrategy::PrimitiveUnion => {
            if !target.is_array() {
                *target = Value::Array(Vec::new());
            }
            if let Some(t) = target.as_array_mut() {
                for e in aa {
                    if !t.contains(e) {
                        t.push(e.clone());
                    }
                }
            }
        }
        ListStrategy::MergeByKey(key) => {
            let Some(applied_keys) = keyed_elements(aa, key) else {
                *target = Value::Array(aa.to_vec());
                return;
            };
            let live_keys = target.as_array().and_then(|t| keyed_elements(t, key));
            let (Some(mut live_keys), Some(t)) = (live_keys, target.as_array_mut()) else {
                // Nothing mergeable live: the applied items, nulls dropped.
                let mut items = Vec::with_capacity(aa.len());
                for e in aa {
                    let mut n = Value::Null;
                    merge_into(kind, names, &mut n, e);
                    items.push(n);
                }
                *target = Value::Array(items);
                return;
            };
            for (e, k) in aa.iter().zip(applied_keys) {
                match live_keys.iter().position(|lk| *lk == k).and_then(|i| t.get_mut(i)) {
                    Some(item) => merge_into(kind, names, item, e),
                    None => {
                        let mut n = Value::Null;
                        merge_into(kind, names, &mut n, e);
                        t.push(n);
                        live_keys.push(k);
                    }
                }
            }
        }
        _ => *target = Value::Array(aa.to_vec()),
    }
}

// ---------------------------------------------------------------------------
// managedFields entries
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: Option<String>,
    subresource: String,
    set: FieldSet,
}

impl Entry {
    /// Upstream's manager identity: appliers are one manager whatever apiVersion they use.
    fn is(&self, manager: &str, operation: &str, api_version: &str, subresource: &str) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource == subresource
            && (operation == APPLY || self.api_version == api_version)
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("manager".into(), Value::String(self.manager.clone()));
        m.insert("operation".into(), Value::String(self.operation.clone()));
        if !self.api_version.is_empty() {
            m.insert("apiVersion".into(), Value::String(self.api_version.clone()));
        }
        if let Some(t) = &self.time {
            m.insert("time".into(), Value::String(t.clone()));
        }
        m.insert("fieldsType".into(), Value::String("FieldsV1".into()));
        m.insert("fieldsV1".into(), self.set.to_fields_v1());
        if !self.subresource.is_empty() {
            m.insert("subresource".into(), Value::String(self.subresource.clone()));
        }
        Value::Object(m)
    }
}

fn managed_fields_of(obj: &Value) -> Option<&Value> {
    obj.get("metadata")?.get("managedFields")
}

/// Tolerant decoding: malformed entries are dropped, duplicates merged.
fn decode_entries(list: Option<&Value>) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    let Some(items) = list.and_then(Value::as_array) else {
        return out;
    };
    for item in items {
        let Some(m) = item.as_object() else { continue };
        let s = |k: &str| m.get(k).and_then(Value::as_str);
        let operation = match s("operation") {
            Some(op @ (APPLY | UPDATE)) => op,
            _ => continue,
        };
        if s("fieldsType").is_some_and(|t| t != "FieldsV1") {
            continue;
        }
        let set = m.get("fieldsV1").map(FieldSet::from_fields_v1).unwrap_or_default();
        if set.is_empty() {
            continue;
        }
        let e = Entry {
            manager: s("manager").unwrap_or_default().to_string(),
            operation: operation.to_string(),
            api_version: s("apiVersion").unwrap_or_default().to_string(),
            time: s("time").map(str::to_string),
            subresource: s("subresource").unwrap_or_default().to_string(),
            set,
        };
        match out.iter_mut().find(|o| o.is(&e.manager, &e.operation, &e.api_version, &e.subresource)) {
            Some(o) => o.set = o.set.union(&e.set),
            None => out.push(e),
        }
    }
    out
}

/// Upstream merges the oldest Update entries into per-apiVersion "ancient-changes" buckets.
fn cap_update_managers(entries: &mut Vec<Entry>) {
    loop {
        let updates = entries.iter().filter(|e| e.operation == UPDATE).count();
        if updates <= MAX_UPDATE_MANAGERS {
            return;
        }
        let oldest = entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.operation == UPDATE && e.manager != ANCIENT_CHANGES)
            .min_by(|(_, a), (_, b)| (&a.time, &a.manager).cmp(&(&b.time, &b.manager)))
            .map(|(i, _)| i);
        let Some(i) = oldest else { return };
        let e = entries.remove(i);
        match entries.iter_mut().find(|b| b.is(ANCIENT_CHANGES, UPDATE, &e.api_version, "")) {
            Some(b) => {
                b.set = b.set.union(&e.set);
                b.time = e.time;
            }
            None => entries.push(Entry {
                manager: ANCIENT_CHANGES.to_string(),
                operation: UPDATE.to_string(),
                subresource: String::new(),
                ..e
            }),
        }
    }
}

/// Writes entries (empty ones dropped) in upstream's order: Apply before
/// Update, then by time, manager, apiVersion, subresource.
fn set_managed_fields(obj: &mut Value, mut entries: Vec<Entry>) {
    entries.retain(|e| !e.set.is_empty());
    cap_update_managers(&mut entries);
    entries.sort_by(|a, b| {
        (&a.operation, &a.time, &a.manager, &a.api_version, &a.subresource)
            .cmp(&(&b.operation, &b.time, &b.manager, &b.api_version, &b.subresource))
    });
    let Some(om) = obj.as_object_mut() else { return };
    if entries.is_empty() {
        if let Some(meta) = om.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("managedFields");
        }
        return;
    }
    let meta = om.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    if let Some(mm) = meta.as_object_mut() {
        mm.insert("managedFields".into(), Value::Array(entries.iter().map(Entry::to_json).collect()));
    }
}

// ---------------------------------------------------------------------------
// Apply, update, conflicts
// ---------------------------------------------------------------------------

/// One field another manager owns with a different value.
///
/// `operation`, `api_version` and `subresource` describe the owning entry, so
/// the message can name the manager as upstream does (the apiVersion is only
/// printed for Update managers).
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    pub manager: String,
    /// e.g. `.spec.replicas`
    pub field: String,
    /// "Apply" or "Update".
    pub operation: String,
    pub api_version: String,
    /// "" or e.g. "status".
    pub subresource: String,
}

/// Server-side apply of `applied` (the user's partial config, same kind) by
/// `manager` onto `live` (None = the object does not exist yet).
///
/// Returns the merged object with metadata.managedFields updated: the manager's
/// Apply entry owns exactly the fields in `applied`; fields it owned in its
/// previous Apply entry but no longer applies are removed unless someone else
/// owns them; fields whose value changes and that other managers own are
/// conflicts, unless `force`, which moves them to this manager. An existing
/// object without managedFields has its fields attributed to
/// "before-first-apply" (Update) first, as upstream does. `subresource` is ""
/// or "status"; a status apply merges and owns only `status`, a main apply
/// everything else.
#[allow(clippy::too_many_arguments)]
pub fn apply(
    kind: &str,
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    api_version: &str,
    force: bool,
    subresource: &str,
    now: &str,
) -> Result<Value, Vec<Conflict>> {
    let ignore_status = subresource != "status";
    let empty = Value::Object(Map::new());
    let live_obj = live.filter(|l| l.is_object()).unwrap_or(&empty);

    let mut entries = decode_entries(managed_fields_of(live_obj));
    if live.is_some() && entries.is_empty() {
        entries.push(Entry {
            manager: BEFORE_FIRST_APPLY.to_string(),
            operation: UPDATE.to_string(),
            api_version: api_version.to_string(),
            time: Some(now.to_string()),
            subresource: String::new(),
            set: FieldSet::from_object(kind, live_obj, ignore_status),
        });
    }

    let applied_set = FieldSet::from_object(kind, applied, ignore_status);
    let mut merged = merge_top(kind, live_obj, applied, ignore_status);

    let self_idx = entries.iter().position(|e| e.is(manager, APPLY, api_version, subresource));
    let last_set = self_idx.and_then(|i| entries.get(i)).map(|e| e.set.clone()).unwrap_or_default();
    let mut keep = applied_set.clone();
    for (i, e) in entries.iter().enumerate() {
        if Some(i) != self_idx {
            keep.root.union_in(&e.set.root);
        }
    }
    for p in last_set.difference(&keep).members() {
        prune_path(&mut merged, &p, &keep);
    }

    let (changed, removed) = compare(kind, live_obj, &merged, ignore_status);
    let mut conflicts = Vec::new();
    let mut taken = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if Some(i) == self_idx {
            continue;
        }
        let c = e.set.intersection(&changed);
        if c.is_empty() {
            continue;
        }
        for field in c.iter() {
            conflicts.push(Conflict {
                manager: e.manager.clone(),
                field,
                operation: e.operation.clone(),
                api_version: e.api_version.clone(),
                subresource: e.subresource.clone(),
            });
        }
        taken.push((i, c));
    }
    if !force && !conflicts.is_empty() {
        conflicts.sort_by(|a, b| identity(a).cmp(&identity(b)));
        return Err(conflicts);
    }
    for (i, c) in taken {
        if let Some(e) = entries.get_mut(i) {
            e.set = e.set.difference(&c);
        }
    }
    for (i, e) in entries.iter_mut().enumerate() {
        if Some(i) != self_idx {
            e.set = e.set.difference(&removed);
        }
    }
    let entry = Entry {
        manager: manager.to_string(),
        operation: APPLY.to_string(),
        api_version: api_version.to_string(),
        time: Some(now.to_string()),
        subresource: subresource.to_string(),
        set: applied_set,
    };
    match self_idx.and_then(|i| entries.get_mut(i)) {
        Some(e) => *e = entry,
        None => entries.push(entry),
    }
    set_managed_fields(&mut merged, entries);
    Ok(merged)
}

fn identity(c: &Conflict) -> (&str, &str, &str, &str) {
    (&c.manager, &c.operation, &c.api_version, &c.subresource)
}

/// Upstream's reset request: `managedFields: []` or `[{}]` in the written object.
fn is_reset(v: Option<&Value>) -> bool {
    match v.and_then(Value::as_array).map(Vec::as_slice) {
        Some([]) => true,
        Some([only]) => only.as_object().is_some_and(Map::is_empty),
        _ => false,
    }
}

/// Ownership after a non-apply write (create/update/patch) by `manager`.
///
/// Fields that changed between `old` (None on create) and `new` become owned by
/// `manager`'s Update entry (one per manager + apiVersion + subresource, merged
/// with its previous set, `time` refreshed only when it gained fields) and are
/// taken from every other entry; removed fields leave every entry. Like
/// upstream, managedFields written in `new` replace the old ones (for main
/// resource writes), and `[]` or `[{}]` resets them. Empty `manager` means no
/// tracking: `new` comes back with `old`'s managedFields.
pub fn track_update(kind: &str, old: Option<&Value>, new: &Value, manager: &str, api_version: &str, subresource: &str, now: &str) -> Value {
    track_update_owned(kind, old, new.clone(), manager, api_version, subresource, now)
}

/// track_update() on an object the caller gives up (no copy of it is made).
pub fn track_update_owned(
    kind: &str,
    old: Option<&Value>,
    new: Value,
    manager: &str,
    api_version: &str,
    subresource: &str,
    now: &str,
) -> Value {
    let mut out = new;
    if manager.is_empty() {
        if let Some(o) = old {
            set_managed_fields(&mut out, decode_entries(managed_fields_of(o)));
        }
        return out;
    }
    if !out.is_object() {
        return out;
    }
    let ignore_status = subresource != "status";
    let empty = Value::Object(Map::new());
    let old_obj = old.filter(|o| o.is_object()).unwrap_or(&empty);

    let written = managed_fields_of(&out);
    let mut entries = if !subresource.is_empty() {
        decode_entries(managed_fields_of(old_obj))
    } else if is_reset(written) {
        Vec::new()
    } else {
        let w = decode_entries(written);
        if w.is_empty() {
            decode_entries(managed_fields_of(old_obj))
        } else {
            w
        }
    };

    let (changed, removed) = compare(kind, old_obj, &out, ignore_status);
    let self_idx = entries.iter().position(|e| e.is(manager, UPDATE, api_version, subresource));
    for (i, e) in entries.iter_mut().enumerate() {
        e.set = e.set.difference(&removed);
        if Some(i) != self_idx {
            e.set = e.set.difference(&changed);
        }
    }
    if !changed.is_empty() {
        match self_idx.and_then(|i| entries.get_mut(i)) {
            Some(e) => {
                e.set = e.set.union(&changed);
                e.time = Some(now.to_string());
            }
            None => entries.push(Entry {
                manager: manager.to_string(),
                operation: UPDATE.to_string(),
                api_version: api_version.to_string(),
                time: Some(now.to_string()),
                subresource: subresource.to_string(),
                set: changed,
            }),
        }
    }
    set_managed_fields(&mut out, entries);
    out
}

/// How upstream names a manager: `"m"`, plus ` with subresource "s"`, plus
/// ` using <apiVersion>` for Update managers.
fn print_manager(c: &Conflict) -> String {
    let mut s = Value::String(c.manager.clone()).to_string();
    if !c.subresource.is_empty() {
        s.push_str(&format!(" with subresource {}", Value::String(c.subresource.clone())));
    }
    if c.operation == UPDATE {
        s.push_str(&format!(" using {}", c.api_version));
    }
    s
}

/// The 409 message and the status causes for an apply conflict, worded as upstream:
/// `Apply failed with 1 conflict: conflict with "m" using apps/v1: .spec.replicas`, or
/// `Apply failed with 2 conflicts: conflicts with "m" using apps/v1:\n- .a\n- .b`
/// (grouped by manager, managers sorted). Causes are
/// `{"type":"FieldManagerConflict","message":"conflict with \"m\" using apps/v1","field":".a"}`.
pub fn conflict_message(conflicts: &[Conflict]) -> (String, Vec<Value>) {
    let causes = conflicts
        .iter()
        .map(|c| {
            let mut m = Map::new();
            m.insert("type".into(), Value::String("FieldManagerConflict".into()));
            m.insert("message".into(), Value::String(format!("conflict with {}", print_manager(c))));
            m.insert("field".into(), Value::String(c.field.clone()));
            Value::Object(m)
        })
        .collect();
    if let [c] = conflicts {
        let msg = format!("Apply failed with 1 conflict: conflict with {}: {}", print_manager(c), c.field);
        return (msg, causes);
    }
    let mut groups: BTreeMap<(&str, &str, &str, &str), Vec<&Conflict>> = BTreeMap::new();
    for c in conflicts {
        groups.entry(identity(c)).or_default().push(c);
    }
    let mut lines = Vec::new();
    for group in groups.values() {
        if let Some(first) = group.first() {
            lines.push(format!("conflicts with {}:", print_manager(first)));
        }
        for c in group {
            lines.push(format!("- {}", c.field));
        }
    }
    let msg = format!("Apply failed with {} conflicts: {}", conflicts.len(), lines.join("\n"));
    (msg, causes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const T0: &str = "2025-01-01T00:00:00Z";
    const T1: &str = "2025-01-01T00:01:00Z";
    const T2: &str = "2025-01-01T00:02:00Z";

    fn deploy(replicas: i64, image: &str) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "nginx", "image": image}]}
                }
            }
        })
    }

    fn entries(obj: &Value) -> Vec<Value> {
        managed_fields_of(obj).and_then(Value::as_array).cloned().unwrap_or_default()
    }

    fn entry(obj: &Value, manager: &str, op: &str) -> Option<Value> {
        entries(obj).into_iter().find(|e| e["manager"] == manager && e["operation"] == op)
    }

    fn owned(obj: &Value, manager: &str, op: &str) -> FieldSet {
        entry(obj, manager, op).map(|e| FieldSet::from_fields_v1(&e["fieldsV1"])).unwrap_or_default()
    }

    fn owns(obj: &Value, manager: &str, op: &str, field: &str) -> bool {
        owned(obj, manager, op).iter().any(|f| f == field)
    }

    fn must_apply(kind: &str, live: Option<&Value>, cfg: &Value, m: &str, force: bool, now: &str) -> Value {
        match apply(kind, live, cfg, m, "apps/v1", force, "", now) {
            Ok(v) => v,
            Err(c) => panic!("unexpected conflicts: {c:?}"),
        }
    }

    #[test]
    fn apply_creates_object_with_apply_entry_when_live_is_none() {
        let cfg = deploy(3, "nginx:1");
        let out = must_apply("Deployment", None, &cfg, "kubectl", false, T0);
        assert_eq!(out["spec"], cfg["spec"]);
        assert_eq!(out["metadata"]["name"], "web");
        let es = entries(&out);
        assert_eq!(es.len(), 1);
        assert_eq!(
            es[0],
            json!({
                "manager": "kubectl", "operation": "Apply", "apiVersion": "apps/v1",
                "time": T0, "fieldsType": "FieldsV1",
                "fieldsV1": {
                    "f:metadata": {"f:labels": {"f:app": {}}},
                    "f:spec": {
                        "f:replicas": {},
                        "f:selector": {"f:matchLabels": {"f:app": {}}},
                        "f:template": {
                            "f:metadata": {"f:labels": {"f:app": {}}},
                            "f:spec": {"f:containers": {"k:{\"name\":\"nginx\"}": {".": {}, "f:image": {}, "f:name": {}}}}
                        }
                    }
                }
            })
        );
    }

    #[test]
    fn reapply_without_a_field_removes_it_from_object_and_entry() {
        let mut cfg = deploy(3, "nginx:1");
        cfg["metadata"]["labels"]["tier"] = json!("front");
        let v1 = must_apply("Deployment", None, &cfg, "kubectl", false, T0);
        let v2 = must_apply("Deployment", Some(&v1), &deploy(3, "nginx:1"), "kubectl", false, T1);
        assert_eq!(v2["metadata"]["labels"], json!({"app": "web"}));
        assert!(!owns(&v2, "kubectl", "Apply", ".metadata.labels.tier"));
        assert_eq!(entry(&v2, "kubectl", "Apply").unwrap()["time"], T1);
    }

    #[test]
    fn reapply_without_all_labels_drops_the_emptied_map() {
        let v1 = must_apply("ConfigMap", None, &json!({"metadata": {"name": "c", "labels": {"a": "1"}}, "data": {"k": "v"}}), "m", false, T0);
        let v2 = must_apply("ConfigMap", Some(&v1), &json!({"metadata": {"name": "c"}, "data": {"k": "v"}}), "m", false, T1);
        assert!(v2["metadata"].get("labels").is_none(), "{v2}");
        assert_eq!(v2["data"], json!({"k": "v"}));
    }

    #[test]
    fn two_appliers_sharing_a_field_both_keep_it_and_it_survives_one_dropping_it() {
        let cfg_a = json!({"metadata": {"name": "c", "labels": {"shared": "x", "a": "1"}}});
        let cfg_b = json!({"metadata": {"name": "c", "labels": {"shared": "x"}}});
        let v1 = must_apply("ConfigMap", None, &cfg_a, "a", false, T0);
        let v2 = must_apply("ConfigMap", Some(&v1), &cfg_b, "b", false, T1);
        assert!(owns(&v2, "a", "Apply", ".metadata.labels.shared"));
        assert!(owns(&v2, "b", "Apply", ".metadata.labels.shared"));
        let v3 = must_apply("ConfigMap", Some(&v2), &json!({"metadata": {"name": "c"}}), "a", false, T2);
        assert_eq!(v3["metadata"]["labels"], json!({"shared": "x"}));
        assert!(entry(&v3, "a", "Apply").is_none(), "empty entries are dropped");
        assert!(owns(&v3, "b", "Apply", ".metadata.labels.shared"));
    }

    #[test]
    fn apply_conflicts_on_replicas_changed_by_another_managers_update() {
        let v1 = must_apply("Deployment", None, &deploy(3, "nginx:1"), "kubectl", false, T0);
        let mut scaled = v1.clone();
        scaled["spec"]["replicas"] = json!(5);
        let v2 = track_update("Deployment", Some(&v1), &scaled, "kubectl-scale", "apps/v1", "", T1);
        assert!(owns(&v2, "kubectl-scale", "Update", ".spec.replicas"));
        assert!(!owns(&v2, "kubectl", "Apply", ".spec.replicas"));

        let err = apply("Deployment", Some(&v2), &deploy(3, "nginx:1"), "kubectl", "apps/v1", false, "", T2).unwrap_err();
        assert_eq!(
            err,
            vec![Conflict {
                manager: "kubectl-scale".into(),
                field: ".spec.replicas".into(),
                operation: "Update".into(),
                api_version: "apps/v1".into(),
                subresource: "".into(),
            }]
        );
        let (msg, causes) = conflict_message(&err);
        assert_eq!(msg, "Apply failed with 1 conflict: conflict with \"kubectl-scale\" using apps/v1: .spec.replicas");
        assert_eq!(
            causes,
            vec![json!({"type": "FieldManagerConflict", "message": "conflict with \"kubectl-scale\" using apps/v1", "field": ".spec.replicas"})]
        );
    }

    #[test]
    fn apply_with_same_value_as_other_owner_is_not_a_conflict() {
        let v1 = must_apply("Deployment", None, &deploy(3, "nginx:1"), "kubectl", false, T0);
        let mut scaled = v1.clone();
        scaled["spec"]["replicas"] = json!(5);
        let v2 = track_update("Deployment", Some(&v1), &scaled, "kubectl-scale", "apps/v1", "", T1);
        let v3 = must_apply("Deployment", Some(&v2), &deploy(5, "nginx:1"), "kubectl", false, T2);
        assert!(owns(&v3, "kubectl", "Apply", ".spec.replicas"));
        assert!(owns(&v3, "kubectl-scale", "Update", ".spec.replicas"));
    }

    #[test]
    fn forced_apply_moves_ownership_to_the_applier() {
        let v1 = must_apply("Deployment", None, &deploy(3, "nginx:1"), "kubectl", false, T0);
        let mut scaled = v1.clone();
        scaled["spec"]["replicas"] = json!(5);
        let v2 = track_update("Deployment", Some(&v1), &scaled, "kubectl-scale", "apps/v1", "", T1);
        let v3 = must_apply("Deployment", Some(&v2), &deploy(3, "nginx:1"), "kubectl", true, T2);
        assert_eq!(v3["spec"]["replicas"], 3);
        assert!(owns(&v3, "kubectl", "Apply", ".spec.replicas"));
        assert!(entry(&v3, "kubectl-scale", "Update").is_none(), "its only field was taken");
    }

    #[test]
    fn conflicting_appliers_are_named_without_api_version() {
        let v1 = must_apply("ConfigMap", None, &json!({"metadata": {"name": "c"}, "data": {"k": "1", "j": "1"}}), "a", false, T0);
        let err = apply("ConfigMap", Some(&v1), &json!({"data": {"k": "2", "j": "2"}}), "b", "v1", false, "", T1).unwrap_err();
        let (msg, causes) = conflict_message(&err);
        assert_eq!(msg, "Apply failed with 2 conflicts: conflicts with \"a\":\n- .data.j\n- .data.k");
        assert_eq!(causes.len(), 2);
        assert_eq!(causes[0]["message"], "conflict with \"a\"");
    }

    #[test]
    fn conflict_message_groups_several_managers_sorted() {
        let c = |m: &str, f: &str, op: &str, sub: &str| Conflict {
            manager: m.into(), field: f.into(), operation: op.into(), api_version: "apps/v1".into(), subresource: sub.into(),
        };
        let (msg, causes) = conflict_message(&[
            c("zeta", ".spec.replicas", "Update", ""),
            c("alpha", ".status.x", "Update", "status"),
            c("zeta", ".spec.paused", "Update", ""),
        ]);
        assert_eq!(
            msg,
            "Apply failed with 3 conflicts: conflicts with \"alpha\" with subresource \"status\" using apps/v1:\n- .status.x\nconflicts with \"zeta\" using apps/v1:\n- .spec.replicas\n- .spec.paused"
        );
        assert_eq!(causes[1]["message"], "conflict with \"alpha\" with subresource \"status\" using apps/v1");
    }

    #[test]
    fn keyed_containers_merge_by_name_keeping_live_order() {
        let mut live = deploy(1, "nginx:1");
        live["spec"]["template"]["spec"]["containers"] = json!([
            {"name": "nginx", "image": "nginx:1", "imagePullPolicy": "Always"},
            {"name": "log", "image": "busybox"}
        ]);
        let v1 = track_update("Deployment", None, &live, "creator", "apps/v1", "", T0);
        let mut cfg = deploy(1, "nginx:2");
        cfg["spec"]["template"]["spec"]["containers"] = json!([
            {"name": "sidecar", "image": "envoy"},
            {"name": "nginx", "image": "nginx:1"}
        ]);
        let v2 = must_apply("Deployment", Some(&v1), &cfg, "applier", false, T1);
        assert_eq!(
            v2["spec"]["template"]["spec"]["containers"],
            json!([
                {"name": "nginx", "image": "nginx:1", "imagePullPolicy": "Always"},
                {"name": "log", "image": "busybox"},
                {"name": "sidecar", "image": "envoy"}
            ])
        );
        assert!(owns(&v2, "applier", "Apply", ".spec.template.spec.containers[name=\"sidecar\"].image"));
        assert!(owns(&v2, "applier", "Apply", ".spec.template.spec.containers[name=\"nginx\"]"));
        assert!(owns(&v2, "creator", "Update", ".spec.template.spec.containers[name=\"log\"].image"));
    }

    #[test]
    fn dropping_a_container_from_the_config_removes_that_item() {
        let mut cfg = deploy(1, "nginx:1");
        cfg["spec"]["template"]["spec"]["containers"] =
            json!([{"name": "nginx", "image": "nginx:1"}, {"name": "side", "image": "envoy"}]);
        let v1 = must_apply("Deployment", None, &cfg, "m", false, T0);
        let v2 = must_apply("Deployment", Some(&v1), &deploy(1, "nginx:1"), "m", false, T1);
        assert_eq!(v2["spec"]["template"]["spec"]["containers"], json!([{"name": "nginx", "image": "nginx:1"}]));
    }

    #[test]
    fn finalizers_union_and_atomic_lists_are_replaced() {
        let live = json!({"apiVersion": "example.com/v1", "kind": "Widget",
            "metadata": {"name": "w", "finalizers": ["a"]}, "spec": {"items": [1, 2, 3]}});
        let v1 = track_update("Widget", None, &live, "creator", "example.com/v1", "", T0);
        let cfg = json!({"apiVersion": "example.com/v1", "kind": "Widget",
            "metadata": {"name": "w", "finalizers": ["b"]}, "spec": {"items": [9]}});
        let v2 = apply("Widget", Some(&v1), &cfg, "m", "example.com/v1", true, "", T1).unwrap();
        assert_eq!(v2["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(v2["spec"]["items"], json!([9]));
        assert!(owns(&v2, "m", "Apply", ".metadata.finalizers[=\"b\"]"));
        assert!(owns(&v2, "m", "Apply", ".spec.items"));
        assert!(owns(&v2, "creator", "Update", ".metadata.finalizers[=\"a\"]"));
        assert!(!owns(&v2, "creator", "Update", ".spec.items"));
    }

    #[test]
    fn track_update_moves_a_changed_field_from_the_applier_to_the_updater() {
        let v1 = must_apply("Deployment", None, &deploy(3, "nginx:1"), "kubectl", false, T0);
        let mut edited = v1.clone();
        edited["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:2");
        let v2 = track_update("Deployment", Some(&v1), &edited, "kubectl-edit", "apps/v1", "", T1);
        let img = ".spec.template.spec.containers[name=\"nginx\"].image";
        assert!(owns(&v2, "kubectl-edit", "Update", img));
        assert!(!owns(&v2, "kubectl", "Apply", img));
        assert!(owns(&v2, "kubectl", "Apply", ".spec.replicas"));
        assert_eq!(owned(&v2, "kubectl-edit", "Update").len(), 1);
        // Update entries come after Apply entries.
        assert_eq!(entries(&v2)[0]["operation"], "Apply");
        assert_eq!(entries(&v2)[1]["time"], T1);
    }

    #[test]
    fn track_update_on_create_owns_every_field_and_noop_update_keeps_time() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "uid": "u", "resourceVersion": "1", "annotations": {"x": "y"}},
            "data": {"k": "v"}});
        let v1 = track_update("ConfigMap", None, &cm, "kubectl-create", "v1", "", T0);
        let fs = owned(&v1, "kubectl-create", "Update");
        assert_eq!(fs.iter().collect::<Vec<_>>(), vec![".data.k", ".metadata.annotations.x"]);
        let mut same = v1.clone();
        same["metadata"]["resourceVersion"] = json!("2");
        let v2 = track_update("ConfigMap", Some(&v1), &same, "kubectl-create", "v1", "", T1);
        assert_eq!(entry(&v2, "kubectl-create", "Update").unwrap()["time"], T0);
    }

    #[test]
    fn track_update_keeps_separate_entries_per_api_version_and_subresource() {
        let v1 = track_update("Deployment", None, &deploy(1, "a"), "ctl", "apps/v1", "", T0);
        let mut st = v1.clone();
        st["status"] = json!({"readyReplicas": 1});
        let v2 = track_update("Deployment", Some(&v1), &st, "ctl", "apps/v1", "status", T1);
        let es = entries(&v2);
        assert_eq!(es.len(), 2);
        let status_entry = es.iter().find(|e| e["subresource"] == "status").unwrap();
        assert_eq!(status_entry["fieldsV1"], json!({"f:status": {"f:readyReplicas": {}}}));
        assert!(es.iter().any(|e| e.get("subresource").is_none()));
    }

    #[test]
    fn track_update_with_empty_manager_keeps_old_managed_fields() {
        let v1 = track_update("ConfigMap", None, &json!({"metadata": {"name": "c"}, "data": {"k": "v"}}), "m", "v1", "", T0);
        let mut new = v1.clone();
        new["data"]["k"] = json!("w");
        new["metadata"]["managedFields"] = json!("garbage");
        let v2 = track_update("ConfigMap", Some(&v1), &new, "", "v1", "", T1);
        assert_eq!(v2["data"]["k"], "w");
        assert_eq!(v2["metadata"]["managedFields"], v1["metadata"]["managedFields"]);
    }

    #[test]
    fn track_update_resets_managed_fields_written_as_empty_entry() {
        let v1 = must_apply("ConfigMap", None, &json!({"metadata": {"name": "c"}, "data": {"k": "v"}}), "a", false, T0);
        let mut new = v1.clone();
        new["metadata"]["managedFields"] = json!([{}]);
        let v2 = track_update("ConfigMap", Some(&v1), &new, "m", "v1", "", T1);
        assert!(v2["metadata"].get("managedFields").is_none(), "{v2}");
    }

    #[test]
    fn status_subresource_apply_touches_and_owns_only_status() {
        let v1 = must_apply("Deployment", None, &deploy(3, "nginx:1"), "kubectl", false, T0);
        let cfg = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"z": "1"}},
            "spec": {"replicas": 9}, "status": {"replicas": 3}});
        let v2 = apply("Deployment", Some(&v1), &cfg, "ctrl", "apps/v1", false, "status", T1).unwrap();
        assert_eq!(v2["spec"]["replicas"], 3);
        assert_eq!(v2["status"], json!({"replicas": 3}));
        assert!(v2["metadata"]["labels"].get("z").is_none());
        let e = entry(&v2, "ctrl", "Apply").unwrap();
        assert_eq!(e["subresource"], "status");
        assert_eq!(e["fieldsV1"], json!({"f:status": {"f:replicas": {}}}));
        // And a main-resource apply ignores status.
        let v3 = must_apply("Deployment", Some(&v2), &json!({"status": {"replicas": 0}}), "kubectl", false, T2);
        assert_eq!(v3["status"], json!({"replicas": 3}));
    }

    #[test]
    fn apply_to_object_without_managed_fields_conflicts_with_before_first_apply() {
        let live = deploy(3, "nginx:1");
        let err = apply("Deployment", Some(&live), &deploy(4, "nginx:1"), "kubectl", "apps/v1", false, "", T0).unwrap_err();
        assert_eq!(err.len(), 1);
        assert_eq!(err[0].manager, BEFORE_FIRST_APPLY);
        assert_eq!(err[0].field, ".spec.replicas");
        let ok = must_apply("Deployment", Some(&live), &deploy(3, "nginx:1"), "kubectl", false, T0);
        assert!(owns(&ok, BEFORE_FIRST_APPLY, "Update", ".spec.replicas"));
    }

    #[test]
    fn from_object_ignores_server_metadata_identity_and_type_fields() {
        let obj = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "namespace": "d", "uid": "u", "resourceVersion": "7", "generation": 2,
                "creationTimestamp": "x", "selfLink": "/s", "deletionTimestamp": "y",
                "managedFields": [{"manager": "m"}], "ownerReferences": [{"uid": "o1", "name": "p"}]},
            "status": {"phase": "x"}, "data": {}});
        let fs = FieldSet::from_object("ConfigMap", &obj, true);
        assert_eq!(
            fs.iter().collect::<Vec<_>>(),
            vec![".data", ".metadata.ownerReferences[uid=\"o1\"]", ".metadata.ownerReferences[uid=\"o1\"].name", ".metadata.ownerReferences[uid=\"o1\"].uid"]
        );
        let st = FieldSet::from_object("ConfigMap", &obj, false);
        assert_eq!(st.iter().collect::<Vec<_>>(), vec![".status.phase"]);
    }

    #[test]
    fn fields_v1_round_trip() {
        let fs = FieldSet::from_object("Deployment", &deploy(2, "x"), true);
        let v = fs.to_fields_v1();
        assert_eq!(FieldSet::from_fields_v1(&v), fs);
        assert_eq!(FieldSet::from_fields_v1(&v).to_fields_v1(), v);
        let text = json!({"f:spec": {"f:ports": {"k:{\"port\":80,\"protocol\":\"TCP\"}": {".": {}, "f:port": {}}}, "f:finalizers": {"v:\"a\"": {}}, "f:args": {"i:0": {}}}});
        let fs = FieldSet::from_fields_v1(&text);
        assert_eq!(fs.to_fields_v1(), text);
        assert!(fs.contains(&["f:spec", "f:ports", "k:{\"protocol\": \"TCP\", \"port\": 80}"]));
        assert_eq!(
            fs.iter().collect::<Vec<_>>(),
            vec![".spec.args[0]", ".spec.finalizers[=\"a\"]", ".spec.ports[port=80,protocol=\"TCP\"]", ".spec.ports[port=80,protocol=\"TCP\"].port"]
        );
    }

    #[test]
    fn from_fields_v1_garbage_yields_empty_or_partial_sets() {
        for g in [json!(null), json!("x"), json!([1, 2]), json!({"bogus": {}}), json!({"f:a": 3}), json!({"k:notjson": {}}),
            json!({"i:-1": {}}), json!({"f:a": {"zz": {}}}), json!({".": {}})] {
            assert!(FieldSet::from_fields_v1(&g).is_empty(), "{g}");
        }
        let fs = FieldSet::from_fields_v1(&json!({"f:a": {}, "f:b": "x", "v:[": {}}));
        assert_eq!(fs.iter().collect::<Vec<_>>(), vec![".a"]);
    }

    #[test]
    fn garbage_managed_fields_are_tolerated() {
        for g in [json!("garbage"), json!(42), json!([1, "x", null, {"manager": 5}, {"manager": "m", "operation": "Nope", "fieldsV1": {"f:data": {}}},
            {"manager": "m", "operation": "Update", "fieldsType": "FieldsV2", "fieldsV1": {"f:data": {}}},
            {"manager": "m", "operation": "Update", "fieldsV1": "zzz"}])]
        {
            let live = json!({"metadata": {"name": "c", "managedFields": g.clone()}, "data": {"k": "v"}});
            let out = apply("ConfigMap", Some(&live), &json!({"data": {"k": "v"}}), "a", "v1", false, "", T0).unwrap();
            assert!(owns(&out, "a", "Apply", ".data.k"), "{g}");
            let out = track_update("ConfigMap", Some(&live), &json!({"metadata": {"name": "c"}, "data": {"k": "w"}}), "u", "v1", "", T0);
            assert!(owns(&out, "u", "Update", ".data.k"), "{g}");
        }
    }

    #[test]
    fn hostile_inputs_do_not_panic() {
        let odd = [json!(null), json!(1), json!("s"), json!([]), json!({}), json!({"metadata": 3, "spec": null}),
            json!({"metadata": {"labels": [1], "finalizers": {"a": 1}, "ownerReferences": [1, {"uid": {}}]}}),
            json!({"spec": {"template": {"spec": {"containers": [{"name": "a"}, {"name": "a"}, 3]}}}})];
        for live in &odd {
            for cfg in &odd {
                let _ = apply("Deployment", Some(live), cfg, "m", "apps/v1", false, "", T0);
                let _ = apply("Deployment", Some(live), cfg, "m", "apps/v1", true, "status", T0);
                let _ = apply("Widget", None, cfg, "", "", false, "", "");
                let _ = track_update("Deployment", Some(live), cfg, "m", "apps/v1", "", T0);
                let _ = track_update("Deployment", None, cfg, "m", "apps/v1", "status", T0);
            }
        }
        let (msg, causes) = conflict_message(&[]);
        assert_eq!(msg, "Apply failed with 0 conflicts: ");
        assert!(causes.is_empty());
    }

    #[test]
    fn set_operations_behave_like_sets() {
        let mut a = FieldSet::default();
        assert!(a.insert(&["f:spec", "f:replicas"]));
        assert!(a.insert(&["f:spec", "f:paused"]));
        assert!(!a.insert(&["nonsense"]));
        let mut b = FieldSet::default();
        b.insert(&["f:spec", "f:replicas"]);
        b.insert(&["f:data"]);
        assert_eq!(a.intersection(&b).iter().collect::<Vec<_>>(), vec![".spec.replicas"]);
        assert_eq!(a.difference(&b).iter().collect::<Vec<_>>(), vec![".spec.paused"]);
        assert_eq!(a.union(&b).len(), 3);
        assert!(a.difference(&a).is_empty());
        assert_eq!(a.difference(&a), FieldSet::default());
    }

    #[test]
    fn update_entries_beyond_ten_merge_into_ancient_changes() {
        let mut obj = json!({"metadata": {"name": "c"}, "data": {}});
        for i in 0..12 {
            let mut next = obj.clone();
            next["data"][format!("k{i}")] = json!("v");
            obj = track_update("ConfigMap", Some(&obj), &next, &format!("m{i:02}"), "v1", "", &format!("2025-01-01T00:00:{i:02}Z"));
        }
        let es = entries(&obj);
        assert_eq!(es.len(), 10);
        let old = owned(&obj, ANCIENT_CHANGES, "Update");
        assert_eq!(old.iter().collect::<Vec<_>>(), vec![".data.k0", ".data.k1", ".data.k2"]);
    }
}
