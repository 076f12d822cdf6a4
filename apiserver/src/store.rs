//! Objects in raftstore: one key per object (`/registry/<resource>/<ns>/<name>`), JSON values,
//! and resourceVersion = the key's mod revision. Writes are compare-and-swap transactions on that
//! revision, so two writers can never both win.

use std::sync::Arc;
use std::time::Duration;

use raftstore::mvcc::prefix_end;
use raftstore::replica::Replica;
use raftstore::types::*;
use serde_json::Value;

use crate::catalog::ResourceDef;
use crate::error::{ApiError, ApiResult};

/// Highest revision a request may name before we wait for it (and then give up with 504).
const FUTURE_RV_WAIT: Duration = Duration::from_secs(3);

pub fn object_key(res: &ResourceDef, ns: Option<&str>, name: &str) -> Vec<u8> {
    match ns {
        Some(ns) if res.namespaced => format!("{}{ns}/{name}", res.storage).into_bytes(),
        _ => format!("{}{name}", res.storage).into_bytes(),
    }
}

/// The key range of a collection: one namespace, or every namespace.
pub fn collection_range(res: &ResourceDef, ns: Option<&str>) -> (Vec<u8>, Vec<u8>) {
    let prefix = match ns {
        Some(ns) if res.namespaced => format!("{}{ns}/", res.storage).into_bytes(),
        _ => res.storage.clone().into_bytes(),
    };
    let end = prefix_end(&prefix);
    (prefix, end)
}

/// Decodes a stored value and stamps its resourceVersion.
pub fn decode(kv: &KeyValue) -> ApiResult<Value> {
    let mut v: Value = serde_json::from_slice(&kv.value).map_err(|e| ApiError::Internal(format!("stored object {} is not JSON: {e}", String::from_utf8_lossy(&kv.key))))?;
    set_rv(&mut v, kv.mod_revision);
    Ok(v)
}

pub fn set_rv(v: &mut Value, rev: i64) {
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".into(), Value::String(rev.to_string()));
    }
}

/// A stored object's bytes with its resourceVersion added, without decoding the object: only
/// the top-level keys are split (nested values stay raw). Lists are written from these.
pub fn raw_with_rv(kv: &KeyValue) -> ApiResult<Vec<u8>> {
    use serde_json::value::RawValue;
    let top: std::collections::BTreeMap<String, &RawValue> =
        serde_json::from_slice(&kv.value).map_err(|e| ApiError::Internal(format!("stored object {} is not a JSON object: {e}", String::from_utf8_lossy(&kv.key))))?;
    let mut out = Vec::with_capacity(kv.value.len() + 32);
    out.push(b'{');
    let rv = format!("\"resourceVersion\":\"{}\"", kv.mod_revision);
    let mut first = true;
    let mut saw_meta = false;
    for (k, v) in &top {
        if !first {
            out.push(b',');
        }
        first = false;
        serde_json::to_writer(&mut out, k).map_err(|e| ApiError::Internal(e.to_string()))?;
        out.push(b':');
        let raw = v.get().as_bytes();
        if k == "metadata" && raw.first() == Some(&b'{') {
            saw_meta = true;
            out.push(b'{');
            out.extend_from_slice(rv.as_bytes());
            let rest = &raw[1..];
            if rest.first() != Some(&b'}') {
                out.push(b',');
            }
            out.extend_from_slice(rest);
        } else {
            out.extend_from_slice(raw);
        }
    }
    if !saw_meta {
        if !first {
            out.push(b',');
        }
        out.extend_from_slice(format!("\"metadata\":{{{rv}}}").as_bytes());
    }
    out.push(b'}');
    Ok(out)
}

/// The stored form: no resourceVersion (it is the key's revision).
fn encode(v: &Value) -> ApiResult<Vec<u8>> {
    Ok(stored_form(v)?.1)
}

/// The object as stored (without its resourceVersion), and its bytes.
fn stored_form(v: &Value) -> ApiResult<(Value, Vec<u8>)> {
    into_stored_form(v.clone())
}

/// `stored_form` of an object the caller gives up.
fn into_stored_form(mut v: Value) -> ApiResult<(Value, Vec<u8>)> {
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    let bytes = serde_json::to_vec(&v).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((v, bytes))
}

/// A version as written (or read): the object as stored, without its resourceVersion, and
/// the revision that is its resourceVersion.
pub struct Written {
    pub obj: Arc<Value>,
    pub rv: i64,
}

impl Written {
    /// A copy of the object with its resourceVersion.
    pub fn value(&self) -> Value {
        let mut v = Value::clone(&self.obj);
        set_rv(&mut v, self.rv);
        v
    }
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Freshness {
    /// Linearizable: everything committed before the request.
    Latest,
    /// Whatever this replica has applied (resourceVersion=0).
    Any,
    /// At least this revision (resourceVersion=N, NotOlderThan).
    NotOlderThan(i64),
    /// Exactly this revision (resourceVersionMatch=Exact, continue tokens).
    Exact(i64),
}

/// An object a write depends on: it must still be at `revision`; it is replaced by `value`.
/// With no revision it is written unconditionally (bookkeeping such as fencing tokens).
pub struct Guard {
    pub key: Vec<u8>,
    pub revision: Option<i64>,
    pub value: Value,
}

/// A fencing token a request carries (header `X-Kuberaft-Fence: NAMESPACE/LEASE=HOLDER@EPOCH`):
/// its writes commit only while the named Lease's fence still names that holder and epoch. The
/// epoch is the Lease's leaseTransitions when the holder's term began, so a holder that lost the
/// Lease and took it back cannot have writes of its old term commit in the new one.
#[derive(Clone, Debug)]
pub struct Fence {
    pub namespace: String,
    pub lease: String,
    pub holder: String,
    pub epoch: i64,
}

/// Where a Lease's fence lives: one key per Lease, holding its holder and epoch.
pub fn fence_key(namespace: &str, lease: &str) -> Vec<u8> {
    format!("/registry/fences/{namespace}/{lease}").into_bytes()
}

/// The fence a Lease held by `holder` with `epoch` (its leaseTransitions) stores.
pub fn fence_token(holder: &str, epoch: i64) -> Value {
    Value::String(format!("{holder}@{epoch}"))
}

pub fn fence_value(holder: &str, epoch: i64) -> Vec<u8> {
    serde_json::to_vec(&fence_token(holder, epoch)).unwrap_or_default()
}

tokio::task_local! {
    /// The fence of the request being served, if it carries one.
    pub static FENCE: Option<Fence>;
}

pub enum Created {
    Done(i64),
    /// The name is taken.
    Exists,
    /// An allocation or a guard changed meanwhile: compute again and retry.
    Raced,
}

#[derive(Clone)]
pub struct Store {
    pub replica: Arc<Replica>,
}

pub struct ScanPage<T> {
    pub items: Vec<T>,
    pub revision: i64,
    pub next_key: Option<Vec<u8>>,
}

pub struct Page {
    pub items: Vec<(Value, KeyValue)>,
    /// The snapshot revision the page was read at.
    pub revision: i64,
    /// Key after the last returned one, when more remain.
    pub next_key: Option<Vec<u8>>,
    pub remaining: Option<i64>,
}

impl Store {
    pub fn current_revision(&self) -> i64 {
        self.replica.current_revision()
    }

    /// Makes the local state at least as fresh as asked; returns the revision to read at (0 =
    /// current).
    pub async fn ensure(&self, f: Freshness) -> ApiResult<i64> {
        match f {
            Freshness::Latest => {
                self.replica.read_barrier().await?;
                Ok(0)
            }
            Freshness::Any => Ok(0),
            Freshness::NotOlderThan(rv) => {
                self.wait_for(rv).await?;
                Ok(0)
            }
            Freshness::Exact(rv) => {
                self.wait_for(rv).await?;
                Ok(rv)
            }
        }
    }

    async fn wait_for(&self, rv: i64) -> ApiResult<()> {
        if self.current_revision() >= rv {
            return Ok(());
        }
        // The revision may be committed but not yet applied here: catch up with the leader.
        self.replica.read_barrier().await?;
        let deadline = tokio::time::Instant::now() + FUTURE_RV_WAIT;
        while self.current_revision() < rv {
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::ResourceVersionTooLarge { requested: rv, current: self.current_revision() });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// The object with its resourceVersion, as a value of the caller's own.
    pub async fn get(&self, key: &[u8], fresh: Freshness) -> ApiResult<Option<(Value, KeyValue)>> {
        Ok(self.get_shared(key, fresh).await?.map(|(obj, kv)| (Written { obj, rv: kv.mod_revision }.value(), kv)))
    }

    /// The object as stored (without its resourceVersion: that is the kv's mod revision),
    /// shared with the decoded-object cache: for readers that only look at it, and writers that
    /// build a new version from it, no copy of the whole object.
    pub async fn get_shared(&self, key: &[u8], fresh: Freshness) -> ApiResult<Option<(Arc<Value>, KeyValue)>> {
        let at = self.ensure(fresh).await?;
        let req = RangeRequest { key: key.to_vec(), revision: at, ..Default::default() };
        let (resp, _) = self.replica.range(&req, true).await?;
        match resp.kvs.into_iter().next() {
            Some(kv) => Ok(Some((crate::decoded::object(&kv)?, kv))),
            None => Ok(None),
        }
    }

    /// One page of a collection, filtered by `keep`. Reads batches until `limit` matching items
    /// are found (0 = no limit) so that filtering never returns short pages needlessly.
    pub async fn list(&self, start: &[u8], end: &[u8], fresh: Freshness, limit: usize, keep: &(dyn Fn(&Value) -> bool + Sync)) -> ApiResult<Page> {
        let pick = |kv: &KeyValue| -> ApiResult<Option<(Value, KeyValue)>> {
            let v = decode(kv)?;
            Ok(keep(&v).then(|| (v, kv.clone())))
        };
        let p = self.scan(start, end, fresh, limit, &pick).await?;
        Ok(Page { items: p.items, revision: p.revision, next_key: p.next_key, remaining: None })
    }

    /// Every object of a key range as stored (see `get_shared`), for readers that only look.
    pub async fn list_shared(&self, start: &[u8], end: &[u8], fresh: Freshness) -> ApiResult<Vec<(Arc<Value>, KeyValue)>> {
        let pick = |kv: &KeyValue| -> ApiResult<Option<(Arc<Value>, KeyValue)>> { Ok(Some((crate::decoded::object(kv)?, kv.clone()))) };
        Ok(self.scan(start, end, fresh, 0, &pick).await?.items)
    }

    /// The paging loop under `list`: `pick` maps each stored kv to an item or skips it.
    pub async fn scan<T>(&self, start: &[u8], end: &[u8], fresh: Freshness, limit: usize, pick: &(dyn Fn(&KeyValue) -> ApiResult<Option<T>> + Sync)) -> ApiResult<ScanPage<T>> {
        let mut at = self.ensure(fresh).await?;
        let mut from = start.to_vec();
        let mut items = Vec::new();
        let batch = if limit == 0 { 0 } else { (limit + 1).max(64) as i64 };
        loop {
            let req = RangeRequest { key: from.clone(), range_end: end.to_vec(), revision: at, limit: batch, ..Default::default() };
            // The store answers with its current revision; a read at a given revision (a
            // continue token's, or this list's first batch) stays at that one, so every page of a
            // list is the same snapshot and a watch from the list's revision misses nothing.
            let (resp, current) = self.replica.range_page(&req, true).await?;
            if at <= 0 {
                at = current;
            }
            let rev = at;
            let last_key = resp.kvs.last().map(|kv| kv.key.clone());
            for kv in resp.kvs {
                let Some(item) = pick(&kv)? else { continue };
                if limit > 0 && items.len() == limit {
                    // One more matching item exists: the next page starts at it.
                    return Ok(ScanPage { items, revision: rev, next_key: Some(kv.key) });
                }
                items.push(item);
            }
            match last_key {
                Some(mut k) if resp.more => {
                    k.push(0);
                    from = k;
                }
                _ => return Ok(ScanPage { items, revision: rev, next_key: None }),
            }
        }
    }

    async fn txn(&self, mut t: TxnRequest) -> ApiResult<(i64, TxnResponse)> {
        let fence = FENCE.try_with(|f| f.clone()).ok().flatten();
        if let Some(f) = &fence {
            t.compare.push(Compare { key: fence_key(&f.namespace, &f.lease), range_end: vec![], result: CompareResult::Equal, target: CompareTarget::Value(fence_value(&f.holder, f.epoch)) });
        }
        let (rev, res) = self.replica.write_ok(Command::Txn(t)).await?;
        let r = match res {
            CommandResult::Txn(r) => r,
            other => return Err(ApiError::Internal(format!("unexpected store answer {other:?}"))),
        };
        if let (false, Some(f)) = (r.succeeded, &fence) {
            // Was it the fence? Then this holder lost the lease: refuse, do not retry.
            let req = RangeRequest { key: fence_key(&f.namespace, &f.lease), ..Default::default() };
            let (cur, _) = self.replica.range(&req, false).await?;
            let now = cur.kvs.first().map(|kv| kv.value.clone()).unwrap_or_default();
            if now != fence_value(&f.holder, f.epoch) {
                let token: String = serde_json::from_slice(&now).unwrap_or_default();
                let (holder, epoch) = token.rsplit_once('@').unwrap_or((token.as_str(), "?"));
                return Err(ApiError::Conflict {
                    gr: crate::error::GroupResource { group: "coordination.k8s.io".into(), resource: "leases".into() },
                    name: f.lease.clone(),
                    reason: format!("fenced: {:?} no longer holds lease {}/{} in epoch {} (the holder is {holder:?}, epoch {epoch})", f.holder, f.namespace, f.lease, f.epoch),
                });
            }
        }
        Ok((rev, r))
    }

    /// Creates `key` if absent, in one transaction with `extra` keys that must be absent too
    /// (allocations) and `guards`: objects that must still be at the given revision, replaced
    /// with new values (ResourceQuota usage).
    pub async fn create(&self, key: &[u8], obj: &Value, extra: Vec<(Vec<u8>, Vec<u8>)>, guards: Vec<Guard>) -> ApiResult<Created> {
        let mut compare = vec![Compare { key: key.to_vec(), range_end: vec![], result: CompareResult::Equal, target: CompareTarget::Create(0) }];
        let (stored, bytes) = stored_form(obj)?;
        // Before the write: its watchers may see it committed before this call returns.
        crate::decoded::remember(&bytes, stored);
        let mut success = vec![Op::Put(PutRequest { key: key.to_vec(), value: bytes, ..Default::default() })];
        for (k, v) in extra {
            compare.push(Compare { key: k.clone(), range_end: vec![], result: CompareResult::Equal, target: CompareTarget::Create(0) });
            success.push(Op::Put(PutRequest { key: k, value: v, ..Default::default() }));
        }
        for g in guards {
            if let Some(rev) = g.revision {
                compare.push(Compare { key: g.key.clone(), range_end: vec![], result: CompareResult::Equal, target: CompareTarget::Mod(rev) });
            }
            success.push(Op::Put(PutRequest { key: g.key, value: encode(&g.value)?, ..Default::default() }));
        }
        // On failure, say whether the object itself exists (else something else moved).
        let failure = vec![Op::Range(RangeRequest { key: key.to_vec(), keys_only: true, ..Default::default() })];
        let (rev, r) = self.txn(TxnRequest { compare, success, failure }).await?;
        if r.succeeded {
            return Ok(Created::Done(rev));
        }
        let exists = matches!(r.responses.first(), Some(OpResponse::Range(rr)) if !rr.kvs.is_empty());
        Ok(if exists { Created::Exists } else { Created::Raced })
    }

    /// Replaces `key` if its mod revision is still `expected`. Ok(None) = it changed (or went).
    pub async fn update(&self, key: &[u8], expected: i64, obj: &Value) -> ApiResult<Option<i64>> {
        self.update_guarded(key, expected, obj, vec![]).await
    }

    /// update() with guards (see `Guard`) in the same transaction.
    pub async fn update_guarded(&self, key: &[u8], expected: i64, obj: &Value, guards: Vec<Guard>) -> ApiResult<Option<i64>> {
        Ok(self.update_owned(key, expected, obj.clone(), guards).await?.map(|w| w.rv))
    }

    /// update_guarded() of an object the caller gives up: it becomes the stored version, shared
    /// with the decoded-object cache, without a copy.
    pub async fn update_owned(&self, key: &[u8], expected: i64, obj: Value, guards: Vec<Guard>) -> ApiResult<Option<Written>> {
        let mut compare = vec![Compare { key: key.to_vec(), range_end: vec![], result: CompareResult::Equal, target: CompareTarget::Mod(expected) }];
        let (stored, bytes) = into_stored_form(obj)?;
        let stored = Arc::new(stored);
        // Before the write: its watchers may see it committed before this call returns.
        crate::decoded::remember_shared(&bytes, stored.clone());
        let mut success = vec![Op::Put(PutRequest { key: key.to_vec(), value: bytes, ..Default::default() })];
        for g in guards {
            if let Some(rev) = g.revision {
                compare.push(Compare { key: g.key.clone(), range_end: vec![], result: CompareResult::Equal, target: CompareTarget::Mod(rev) });
            }
            success.push(Op::Put(PutRequest { key: g.key, value: encode(&g.value)?, ..Default::default() }));
        }
        let (rev, r) = self.txn(TxnRequest { compare, success, failure: vec![] }).await?;
        Ok(r.succeeded.then_some(Written { obj: stored, rv: rev }))
    }

    /// Deletes `key` (and `extra` keys) if its mod revision is still `expected`.
    pub async fn delete(&self, key: &[u8], expected: i64, extra: Vec<Vec<u8>>) -> ApiResult<Option<i64>> {
        let compare = vec![Compare { key: key.to_vec(), range_end: vec![], result: CompareResult::Equal, target: CompareTarget::Mod(expected) }];
        let mut success = vec![Op::Delete(DeleteRequest { key: key.to_vec(), ..Default::default() })];
        for k in extra {
            success.push(Op::Delete(DeleteRequest { key: k, ..Default::default() }));
        }
        let (rev, r) = self.txn(TxnRequest { compare, success, failure: vec![] }).await?;
        Ok(r.succeeded.then_some(rev))
    }

    /// Raw keys under a prefix (allocator bookkeeping).
    pub async fn keys(&self, prefix: &[u8]) -> ApiResult<Vec<Vec<u8>>> {
        let req = RangeRequest { key: prefix.to_vec(), range_end: prefix_end(prefix), keys_only: true, ..Default::default() };
        let (resp, _) = self.replica.range(&req, false).await?;
        Ok(resp.kvs.into_iter().map(|kv| kv.key).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(v: &str, rev: i64) -> KeyValue {
        KeyValue { key: b"/registry/x".to_vec(), value: v.as_bytes().to_vec(), mod_revision: rev, create_revision: rev, version: 1, lease: 0 }
    }

    #[test]
    fn raw_lists_carry_the_same_objects_as_decoding() {
        for v in [
            r#"{"apiVersion":"v1","data":{"metadata":{"x":"\"metadata\":{"}},"kind":"ConfigMap","metadata":{"labels":{"a":"b"},"name":"c"}}"#,
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{}}"#,
            r#"{"alpha":{"metadata":{"name":"inner"}},"apiVersion":"x/v1","kind":"X"}"#,
        ] {
            let k = kv(v, 42);
            let raw: Value = serde_json::from_slice(&raw_with_rv(&k).expect("raw")).expect("valid JSON");
            let mut expected = decode(&k).expect("decode");
            if expected.get("metadata").is_none() {
                expected["metadata"] = serde_json::json!({"resourceVersion": "42"});
            }
            assert_eq!(raw, expected, "{v}");
            assert_eq!(raw["metadata"]["resourceVersion"], "42");
        }
        assert!(raw_with_rv(&kv("[1]", 1)).is_err());
    }
}
