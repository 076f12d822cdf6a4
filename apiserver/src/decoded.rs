//! Stored objects decoded once per process. Every watcher of a resource receives the same
//! stored versions, and a read-modify-write (a patch, a binding) usually reads the version
//! that was just written: each version is decoded (or, when it was written here, kept from
//! the write) once, rather than once per watcher and per read. The cache holds objects as
//! stored, without resourceVersion, keyed by their bytes, so entries never go stale; the
//! resourceVersion is added on the way out (`with_rv`, `WithRv`). The oldest entries are
//! evicted first (one at a time: emptying the whole cache at once made every watcher decode
//! again, and dropping thousands of values stalled them all).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use raftstore::types::KeyValue;
use serde_json::Value;

use crate::error::{ApiError, ApiResult};

/// Entries of the encoded watch line cache (watch.rs): lines are needed only while the
/// watchers of one event take it.
pub(crate) const ENTRIES: usize = 8192;

/// Decoded objects: up to this many, holding at most `VALUE_BYTES` of stored JSON. A pod may
/// wait seconds between its create and its binding, and it is read then: at a thousand pods a
/// second, with three writes each plus events and leases, 8,192 entries were gone by then.
const VALUE_ENTRIES: usize = 32_768;
const VALUE_BYTES: usize = 32 << 20;

/// A map that forgets its oldest entries beyond a number of entries and a total weight.
pub(crate) struct Fifo<K, V> {
    map: HashMap<K, (V, usize)>,
    order: VecDeque<K>,
    entries: usize,
    budget: usize,
    weight: usize,
}

impl<K: std::hash::Hash + Eq + Clone, V: Clone> Fifo<K, V> {
    pub(crate) fn new() -> Self {
        Self::bounded(ENTRIES, usize::MAX)
    }

    pub(crate) fn bounded(entries: usize, budget: usize) -> Self {
        Fifo { map: HashMap::new(), order: VecDeque::new(), entries, budget, weight: 0 }
    }

    pub(crate) fn get(&self, k: &K) -> Option<V> {
        self.map.get(k).map(|(v, _)| v.clone())
    }

    /// Inserts and returns what was evicted, to be dropped after the lock is released.
    pub(crate) fn insert(&mut self, k: K, v: V) -> Vec<V> {
        self.insert_weighted(k, v, 0)
    }

    pub(crate) fn insert_weighted(&mut self, k: K, v: V, weight: usize) -> Vec<V> {
        if let Some((_, w)) = self.map.insert(k.clone(), (v, weight)) {
            self.weight = self.weight - w + weight;
        } else {
            self.weight += weight;
            self.order.push_back(k);
        }
        let mut evicted = Vec::new();
        while self.order.len() > self.entries || (self.weight > self.budget && self.order.len() > 1) {
            let Some(old) = self.order.pop_front() else { break };
            if let Some((v, w)) = self.map.remove(&old) {
                self.weight -= w;
                evicted.push(v);
            }
        }
        evicted
    }
}

/// A decoded object and the exact bytes it was decoded from.
#[derive(Clone)]
struct Entry {
    bytes: Arc<[u8]>,
    value: Arc<Value>,
}

/// Keyed by a hash of the stored bytes: decoding is a pure function of them, so an entry can be
/// put in before the write that stores those bytes has even committed (a watcher may see the
/// committed write before its writer returns), and a lookup compares the bytes themselves.
fn values() -> MutexGuard<'static, Fifo<u64, Entry>> {
    static VALUES: OnceLock<Mutex<Fifo<u64, Entry>>> = OnceLock::new();
    VALUES.get_or_init(|| Mutex::new(Fifo::bounded(VALUE_ENTRIES, VALUE_BYTES))).lock().unwrap_or_else(|p| p.into_inner())
}

fn hash(bytes: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0x6b75_6265_7261_6674).hash_one(bytes)
}

/// The stored version `kv` as stored, i.e. without its resourceVersion (see `with_rv`).
pub fn object(kv: &KeyValue) -> ApiResult<Arc<Value>> {
    let h = hash(&kv.value);
    if let Some(e) = values().get(&h) {
        if *e.bytes == kv.value[..] {
            return Ok(e.value);
        }
    }
    let v: Value = serde_json::from_slice(&kv.value).map_err(|e| ApiError::Internal(format!("stored object {} is not JSON: {e}", String::from_utf8_lossy(&kv.key))))?;
    let v = Arc::new(v);
    let evicted = values().insert_weighted(h, Entry { bytes: kv.value.as_slice().into(), value: v.clone() }, kv.value.len());
    drop(evicted);
    Ok(v)
}

/// The stored version `kv` with its resourceVersion, as a value of the caller's own.
pub fn with_rv(kv: &KeyValue) -> ApiResult<Value> {
    Ok(crate::store::Written { obj: object(kv)?, rv: kv.mod_revision }.value())
}

/// Keeps `stored`, the object that `bytes` (about to be written) decode to, so that nobody
/// needs to decode them.
pub(crate) fn remember(bytes: &[u8], stored: Value) {
    remember_shared(bytes, Arc::new(stored));
}

/// `remember` of an object the caller keeps a share of.
pub(crate) fn remember_shared(bytes: &[u8], stored: Arc<Value>) {
    let evicted = values().insert_weighted(hash(bytes), Entry { bytes: bytes.into(), value: stored }, bytes.len());
    drop(evicted);
}

/// Serializes an object as stored with `resourceVersion` set in its metadata, without copying
/// it (None: as it is).
pub struct WithRv<'a> {
    pub obj: &'a Value,
    pub rv: Option<i64>,
}

impl serde::Serialize for WithRv<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let (Some(rv), Some(map)) = (self.rv, self.obj.as_object()) else { return self.obj.serialize(s) };
        let mut m = s.serialize_map(Some(map.len()))?;
        for (k, v) in map {
            match v.as_object() {
                Some(meta) if k == "metadata" => m.serialize_entry(k, &MetaWithRv { meta, rv: rv.to_string() })?,
                _ => m.serialize_entry(k, v)?,
            }
        }
        m.end()
    }
}

/// Serializes an object's metadata as a meta.k8s.io/v1 PartialObjectMetadata, with
/// `resourceVersion` set (None: as it is).
pub struct Partial<'a> {
    pub obj: &'a Value,
    pub rv: Option<i64>,
}

impl serde::Serialize for Partial<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("kind", "PartialObjectMetadata")?;
        m.serialize_entry("apiVersion", "meta.k8s.io/v1")?;
        let empty = serde_json::Map::new();
        let meta = self.obj.get("metadata").and_then(Value::as_object).unwrap_or(&empty);
        match self.rv {
            Some(rv) => m.serialize_entry("metadata", &MetaWithRv { meta, rv: rv.to_string() })?,
            None => m.serialize_entry("metadata", meta)?,
        }
        m.end()
    }
}

struct MetaWithRv<'a> {
    meta: &'a serde_json::Map<String, Value>,
    rv: String,
}

impl serde::Serialize for MetaWithRv<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let had = self.meta.contains_key("resourceVersion");
        let mut m = s.serialize_map(Some(self.meta.len() + usize::from(!had)))?;
        for (k, v) in self.meta {
            if k == "resourceVersion" {
                m.serialize_entry(k, &self.rv)?;
            } else {
                m.serialize_entry(k, v)?;
            }
        }
        if !had {
            m.serialize_entry("resourceVersion", &self.rv)?;
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, rev: i64, value: &str) -> KeyValue {
        KeyValue { key: key.as_bytes().to_vec(), mod_revision: rev, value: value.as_bytes().to_vec(), ..Default::default() }
    }

    #[test]
    fn a_version_written_here_is_served_as_decoding_it_would_be() {
        let stored = serde_json::json!({"metadata": {"name": "a"}, "spec": {"x": 1.5, "y": [1, "two"]}});
        let bytes = serde_json::to_vec(&stored).expect("json");
        remember(&bytes, stored.clone());
        let from_cache = object(&kv("/t/written", 7, std::str::from_utf8(&bytes).expect("utf8"))).expect("decoded");
        assert!(Arc::ptr_eq(&from_cache, &object(&kv("/t/written", 7, std::str::from_utf8(&bytes).expect("utf8"))).expect("decoded")));
        assert_eq!(*from_cache, stored);
        let v = with_rv(&kv("/t/written", 7, std::str::from_utf8(&bytes).expect("utf8"))).expect("decoded");
        assert_eq!(v["metadata"]["resourceVersion"], "7");
        assert_eq!(v, crate::store::decode(&kv("/t/written", 7, std::str::from_utf8(&bytes).expect("utf8"))).expect("decoded"));
    }

    #[test]
    fn partial_object_metadata_carries_the_metadata_and_the_version() {
        let obj = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "uid": "u"}, "spec": {"x": 1}});
        let v = serde_json::to_value(Partial { obj: &obj, rv: Some(9) }).expect("json");
        assert_eq!(v, serde_json::json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": {"name": "a", "uid": "u", "resourceVersion": "9"}}));
        let bare = serde_json::to_value(Partial { obj: &serde_json::json!({}), rv: None }).expect("json");
        assert_eq!(bare["metadata"], serde_json::json!({}));
    }

    #[test]
    fn other_bytes_are_other_objects_and_bad_json_is_an_error() {
        let a = object(&kv("/t/k", 1, r#"{"metadata":{},"v":1}"#)).expect("decoded");
        let b = object(&kv("/t/k", 2, r#"{"metadata":{},"v":2}"#)).expect("decoded");
        assert_eq!((a["v"].as_i64(), b["v"].as_i64()), (Some(1), Some(2)));
        // What was remembered for some bytes is never served for others.
        remember(br#"{"v":3}"#, serde_json::json!({"v": 3}));
        assert_eq!(object(&kv("/t/k", 3, r#"{"v":4}"#)).expect("decoded")["v"], 4);
        assert!(object(&kv("/t/bad", 1, "{not json")).is_err());
    }

    #[test]
    fn with_rv_serializes_as_setting_the_resource_version_would() {
        for obj in [
            serde_json::json!({"kind": "Pod", "metadata": {"name": "a", "uid": "u"}, "spec": {}}),
            serde_json::json!({"kind": "Pod", "metadata": {"name": "a", "resourceVersion": "3"}}),
            serde_json::json!({"kind": "Pod"}),
            serde_json::json!([1, 2]),
        ] {
            let mut expected = obj.clone();
            crate::store::set_rv(&mut expected, 42);
            let out: Value = serde_json::from_slice(&serde_json::to_vec(&WithRv { obj: &obj, rv: Some(42) }).expect("json")).expect("json");
            assert_eq!(out, expected);
            let same: Value = serde_json::from_slice(&serde_json::to_vec(&WithRv { obj: &obj, rv: None }).expect("json")).expect("json");
            assert_eq!(same, obj);
        }
    }

    #[test]
    fn the_oldest_entries_go_first() {
        let mut f = Fifo::new();
        for i in 0..ENTRIES + 2 {
            f.insert(i, i);
        }
        assert_eq!((f.get(&0), f.get(&1), f.get(&2)), (None, None, Some(2)));
        assert_eq!(f.get(&(ENTRIES + 1)), Some(ENTRIES + 1));
        // And beyond a total weight; replacing an entry replaces its weight.
        let mut w = Fifo::bounded(100, 10);
        assert!(w.insert_weighted("a", 1, 4).is_empty());
        assert!(w.insert_weighted("b", 2, 4).is_empty());
        assert!(w.insert_weighted("b", 3, 5).is_empty());
        assert_eq!(w.insert_weighted("c", 4, 2), vec![1]);
        assert_eq!((w.get(&"a"), w.get(&"b"), w.get(&"c")), (None, Some(3), Some(4)));
        // One entry heavier than the whole budget still stays (until the next insert).
        assert_eq!(w.insert_weighted("d", 5, 50), vec![3, 4]);
        assert_eq!(w.get(&"d"), Some(5));
    }
}
