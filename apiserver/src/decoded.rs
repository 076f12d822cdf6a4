//! Stored objects decoded once per process. Every watcher of a resource receives the same
//! stored versions, and a read-modify-write (a patch, a binding) usually reads the version
//! that was just written: each version is decoded (or, when it was written here, kept from
//! the write) once, rather than once per watcher and per read. Entries are keyed by the key
//! and the revision that wrote that version (the value is stamped with it), so they never go
//! stale; the oldest are evicted first (one at a time: emptying the whole cache at once made
//! every watcher decode again, and dropping thousands of values stalled them all).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use raftstore::types::KeyValue;
use serde_json::Value;

use crate::error::ApiResult;

/// Entries of each process-wide cache (decoded objects here, encoded watch lines in watch.rs).
pub(crate) const ENTRIES: usize = 8192;

/// A map that forgets its oldest entries beyond a fixed size.
pub(crate) struct Fifo<K, V> {
    map: HashMap<K, V>,
    order: VecDeque<K>,
}

impl<K: std::hash::Hash + Eq + Clone, V: Clone> Fifo<K, V> {
    pub(crate) fn new() -> Self {
        Fifo { map: HashMap::new(), order: VecDeque::new() }
    }

    pub(crate) fn get(&self, k: &K) -> Option<V> {
        self.map.get(k).cloned()
    }

    /// Inserts and returns what was evicted, to be dropped after the lock is released.
    pub(crate) fn insert(&mut self, k: K, v: V) -> Option<V> {
        if self.map.insert(k.clone(), v).is_some() {
            return None;
        }
        self.order.push_back(k);
        if self.order.len() > ENTRIES {
            let old = self.order.pop_front()?;
            return self.map.remove(&old);
        }
        None
    }
}

fn values() -> MutexGuard<'static, Fifo<(Vec<u8>, i64), Arc<Value>>> {
    static VALUES: OnceLock<Mutex<Fifo<(Vec<u8>, i64), Arc<Value>>>> = OnceLock::new();
    VALUES.get_or_init(|| Mutex::new(Fifo::new())).lock().unwrap_or_else(|p| p.into_inner())
}

/// The stored version `kv` as an object with its resourceVersion.
pub fn decoded(kv: &KeyValue) -> ApiResult<Arc<Value>> {
    let id = (kv.key.clone(), kv.mod_revision);
    if let Some(v) = values().get(&id) {
        return Ok(v);
    }
    let v = Arc::new(crate::store::decode(kv)?);
    let evicted = values().insert(id, v.clone());
    drop(evicted);
    Ok(v)
}

/// Keeps `stored`, the value just written to `key` at revision `rev` (as stored: without a
/// resourceVersion), so that nobody needs to decode that version.
pub(crate) fn remember(key: &[u8], rev: i64, mut stored: Value) {
    crate::store::set_rv(&mut stored, rev);
    let evicted = values().insert((key.to_vec(), rev), Arc::new(stored));
    drop(evicted);
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
        remember(b"/t/written", 7, stored.clone());
        // The bytes differ from what was remembered: what comes back is the remembered value,
        // which must equal what decoding the stored bytes gives.
        let from_cache = decoded(&kv("/t/written", 7, r#"{"metadata":{"name":"a"},"spec":{"x":1.5,"y":[1,"two"]}}"#)).expect("decoded");
        let fresh = crate::store::decode(&kv("/t/other", 7, &serde_json::to_string(&stored).expect("json"))).expect("decoded");
        assert_eq!(*from_cache, fresh);
        assert_eq!(from_cache["metadata"]["resourceVersion"], "7");
    }

    #[test]
    fn versions_are_told_apart_by_revision_and_bad_json_is_an_error() {
        let a = decoded(&kv("/t/k", 1, r#"{"metadata":{},"v":1}"#)).expect("decoded");
        let b = decoded(&kv("/t/k", 2, r#"{"metadata":{},"v":2}"#)).expect("decoded");
        assert_eq!((a["v"].as_i64(), b["v"].as_i64()), (Some(1), Some(2)));
        assert!(decoded(&kv("/t/bad", 1, "{not json")).is_err());
    }

    #[test]
    fn the_oldest_entries_go_first() {
        let mut f = Fifo::new();
        for i in 0..ENTRIES + 2 {
            f.insert(i, i);
        }
        assert_eq!((f.get(&0), f.get(&1), f.get(&2)), (None, None, Some(2)));
        assert_eq!(f.get(&(ENTRIES + 1)), Some(ENTRIES + 1));
    }
}
