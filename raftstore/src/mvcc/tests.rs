use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn open() -> (tempfile::TempDir, Mvcc) {
    let dir = tempfile::tempdir().unwrap();
    let m = Mvcc::open(dir.path()).unwrap();
    (dir, m)
}

fn run(m: &Mvcc, cmd: Command) -> (Response, Vec<RevisionEvents>) {
    run_prev(m, cmd, WantPrev::All)
}

fn run_prev(m: &Mvcc, cmd: Command, want_prev: WantPrev) -> (Response, Vec<RevisionEvents>) {
    let mut b = m.begin();
    b.want_prev_kv(want_prev);
    let r = m.apply(&mut b, &cmd).unwrap();
    let ev = m.commit(b).unwrap();
    (r, ev)
}

fn put(m: &Mvcc, k: &str, v: &str) -> Response {
    put_lease(m, k, v, 0)
}

fn put_lease(m: &Mvcc, k: &str, v: &str, lease: i64) -> Response {
    let p = PutRequest { key: k.into(), value: v.into(), lease, prev_kv: true, ..Default::default() };
    run(m, Command::Txn(TxnRequest { success: vec![Op::Put(p)], ..Default::default() })).0
}

fn del(m: &Mvcc, k: &str, end: &str) -> Response {
    let d = DeleteRequest { key: k.into(), range_end: end.into(), prev_kv: true };
    run(m, Command::Txn(TxnRequest { success: vec![Op::Delete(d)], ..Default::default() })).0
}

fn get(m: &Mvcc, k: &str, end: &str, rev: Revision) -> Result<RangeResponse, ApplyError> {
    m.range(&RangeRequest { key: k.into(), range_end: end.into(), revision: rev, ..Default::default() }).unwrap()
}

fn values(r: &RangeResponse) -> Vec<(String, String)> {
    r.kvs.iter().map(|kv| (String::from_utf8_lossy(&kv.key).into(), String::from_utf8_lossy(&kv.value).into())).collect()
}

#[test]
fn revision_increases_by_one_per_write_and_keeps_versions() {
    let (_d, m) = open();
    assert_eq!(m.current_revision(), 1);
    assert_eq!(put(&m, "a", "1").revision, 2);
    assert_eq!(put(&m, "a", "2").revision, 3);
    assert_eq!(put(&m, "b", "x").revision, 4);
    let r = get(&m, "a", "", 0).unwrap();
    let kv = &r.kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    assert_eq!(values(&get(&m, "a", "", 2).unwrap()), vec![("a".into(), "1".into())]);
    assert_eq!(get(&m, "b", "", 3).unwrap().kvs.len(), 0);
    assert_eq!(get(&m, "a", "", 5), Err(ApplyError::FutureRevision));
}

#[test]
fn delete_of_nothing_does_not_bump_revision_and_delete_leaves_tombstone() {
    let (_d, m) = open();
    put(&m, "a", "1");
    assert_eq!(del(&m, "zz", "").revision, 2);
    let r = del(&m, "a", "");
    assert_eq!(r.revision, 3);
    assert!(get(&m, "a", "", 0).unwrap().kvs.is_empty());
    assert_eq!(values(&get(&m, "a", "", 2).unwrap()), vec![("a".into(), "1".into())]);
    // Recreated key starts a new generation.
    put(&m, "a", "again");
    let kv = &get(&m, "a", "", 0).unwrap().kvs[0];
    assert_eq!((kv.create_revision, kv.version), (4, 1));
}

#[test]
fn range_with_prefix_limit_count_and_past_revision() {
    let (_d, m) = open();
    for (i, k) in ["p/a", "p/b", "p/c", "q/a", "p\0x"].iter().enumerate() {
        put(&m, k, &i.to_string());
    }
    let end = prefix_end(b"p/");
    let r = m.range(&RangeRequest { key: b"p/".to_vec(), range_end: end.clone(), limit: 2, ..Default::default() }).unwrap().unwrap();
    assert_eq!(values(&r), vec![("p/a".into(), "0".into()), ("p/b".into(), "1".into())]);
    assert!(r.more);
    assert_eq!(r.count, 3);
    // At revision 3 only p/a and p/b existed.
    let r = m.range(&RangeRequest { key: b"p/".to_vec(), range_end: end.clone(), revision: 3, ..Default::default() }).unwrap().unwrap();
    assert_eq!(r.count, 2);
    // Keys with a NUL byte sort correctly in the version index.
    let r = m.range(&RangeRequest { key: b"p".to_vec(), range_end: b"p/".to_vec(), revision: 6, ..Default::default() }).unwrap().unwrap();
    assert_eq!(values(&r), vec![("p\0x".into(), "4".into())]);
    // All keys from "\0".
    let all = m.range(&RangeRequest { key: vec![0], range_end: vec![0], revision: 5, ..Default::default() }).unwrap().unwrap();
    assert_eq!(all.count, 4);
    let cnt = m.range(&RangeRequest { key: vec![0], range_end: vec![0], count_only: true, ..Default::default() }).unwrap().unwrap();
    assert_eq!((cnt.count, cnt.kvs.len()), (5, 0));
}

#[test]
fn txn_compares_choose_branch_atomically_at_one_revision() {
    let (_d, m) = open();
    put(&m, "k", "v1"); // rev 2
    let cas = |modrev: i64, val: &str| Command::Txn(TxnRequest {
        compare: vec![Compare { key: b"k".to_vec(), range_end: vec![], result: CompareResult::Equal, target: CompareTarget::Mod(modrev) }],
        success: vec![
            Op::Put(PutRequest { key: b"k".to_vec(), value: val.into(), ..Default::default() }),
            Op::Put(PutRequest { key: b"other".to_vec(), value: b"o".to_vec(), ..Default::default() }),
            Op::Range(RangeRequest { key: b"k".to_vec(), ..Default::default() }),
        ],
        failure: vec![Op::Range(RangeRequest { key: b"k".to_vec(), ..Default::default() })],
    });
    let (r, ev) = run(&m, cas(2, "v2"));
    assert_eq!(r.revision, 3);
    let Ok(CommandResult::Txn(t)) = r.result else { panic!() };
    assert!(t.succeeded);
    // The read inside the txn sees the txn's own put.
    let OpResponse::Range(rr) = &t.responses[2] else { panic!() };
    assert_eq!(rr.kvs[0].value, b"v2");
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].events.len(), 2);
    // Stale CAS fails, runs the else branch, and does not bump the revision.
    let (r, ev) = run(&m, cas(2, "v3"));
    assert_eq!(r.revision, 3);
    let Ok(CommandResult::Txn(t)) = r.result else { panic!() };
    assert!(!t.succeeded);
    assert!(ev.is_empty());
    // Create-if-absent: version == 0.
    let create = Command::Txn(TxnRequest {
        compare: vec![Compare { key: b"new".to_vec(), range_end: vec![], result: CompareResult::Equal, target: CompareTarget::Version(0) }],
        success: vec![Op::Put(PutRequest { key: b"new".to_vec(), value: b"n".to_vec(), ..Default::default() })],
        failure: vec![],
    });
    let Ok(CommandResult::Txn(t)) = run(&m, create.clone()).0.result else { panic!() };
    assert!(t.succeeded);
    let Ok(CommandResult::Txn(t)) = run(&m, create).0.result else { panic!() };
    assert!(!t.succeeded);
    // Value compare against a missing key fails.
    let vc = Command::Txn(TxnRequest {
        compare: vec![Compare { key: b"missing".to_vec(), range_end: vec![], result: CompareResult::NotEqual, target: CompareTarget::Value(b"x".to_vec()) }],
        ..Default::default()
    });
    let Ok(CommandResult::Txn(t)) = run(&m, vc).0.result else { panic!() };
    assert!(!t.succeeded);
}

#[test]
fn compaction_keeps_latest_versions_and_rejects_older_reads() {
    let (_d, m) = open();
    put(&m, "a", "1"); // 2
    put(&m, "a", "2"); // 3
    put(&m, "b", "1"); // 4
    del(&m, "b", ""); // 5
    put(&m, "c", "1"); // 6
    let (r, _) = run(&m, Command::Compact { revision: 5 });
    assert_eq!(r.result, Ok(CommandResult::Compacted));
    assert_eq!(m.compact_revision(), 5);
    assert_eq!(get(&m, "a", "", 4), Err(ApplyError::Compacted { compact_revision: 5 }));
    // Logically compacted at once; physically once the background step has run.
    assert_eq!(m.physically_compacted().unwrap(), 0);
    while !m.compact_step(2).unwrap() {}
    assert_eq!(m.physically_compacted().unwrap(), 5);
    assert_eq!(values(&get(&m, "a", "", 5).unwrap()), vec![("a".into(), "2".into())]);
    assert!(get(&m, "b", "", 5).unwrap().kvs.is_empty());
    // History below the compaction point is gone; from it on it is intact.
    let h = m.history(5, 6, 100).unwrap().unwrap();
    assert_eq!(m.history(4, 6, 100).unwrap(), Err(ApplyError::Compacted { compact_revision: 5 }));
    assert_eq!(h.iter().map(|r| r.revision).collect::<Vec<_>>(), vec![5, 6]);
    assert_eq!(h[0].events[0].kind, EventKind::Delete);
    // Its previous version lay below the compaction point, so it is gone (etcd drops it too).
    assert_eq!(h[0].events[0].prev_kv, None);
    assert_eq!(run(&m, Command::Compact { revision: 5 }).0.result, Err(ApplyError::Compacted { compact_revision: 5 }));
    assert_eq!(run(&m, Command::Compact { revision: 99 }).0.result, Err(ApplyError::FutureRevision));
    // Old versions of "a" are physically gone.
    let n = m.db().iterator_cf(m.cf(CF_VER), IteratorMode::Start).count();
    assert_eq!(n, 3, "a@3, the tombstone of b@5 and c@6 remain");
    // Survives reopen.
    let dir = m.db().path().to_path_buf();
    drop(m);
    let m = Mvcc::open(&dir).unwrap();
    assert_eq!((m.current_revision(), m.compact_revision()), (6, 5));
}

#[test]
fn history_replays_every_event_in_order_with_prev_values() {
    let (_d, m) = open();
    put(&m, "x", "1");
    put(&m, "x", "2");
    put(&m, "y", "1");
    del(&m, "x", "");
    let h = m.history(1, 100, 100).unwrap().unwrap();
    let seq: Vec<(Revision, EventKind, String, Option<String>)> = h
        .iter()
        .flat_map(|r| r.events.iter().map(move |e| (r.revision, e.kind, String::from_utf8_lossy(&e.kv.value).into(), e.prev_kv.as_ref().map(|p| String::from_utf8_lossy(&p.value).into()))))
        .collect();
    assert_eq!(
        seq,
        vec![
            (2, EventKind::Put, "1".into(), None),
            (3, EventKind::Put, "2".into(), Some("1".into())),
            (4, EventKind::Put, "1".into(), None),
            (5, EventKind::Delete, "".into(), Some("2".into())),
        ]
    );
    // Limited replay stops at whole revisions.
    assert_eq!(m.history(3, 100, 1).unwrap().unwrap().len(), 1);
}

#[test]
fn lease_revoke_deletes_attached_keys_in_one_revision() {
    let (_d, m) = open();
    assert_eq!(put_lease(&m, "l", "v", 7).result, Err(ApplyError::LeaseNotFound));
    let (r, _) = run(&m, Command::LeaseGrant { id: 7, ttl: 1 });
    assert_eq!(r.result, Ok(CommandResult::LeaseGranted { id: 7, ttl: MIN_LEASE_TTL }));
    assert_eq!(run(&m, Command::LeaseGrant { id: 7, ttl: 10 }).0.result, Err(ApplyError::LeaseExists));
    put_lease(&m, "l1", "v", 7); // 2
    put_lease(&m, "l2", "v", 7); // 3
    put_lease(&m, "l3", "v", 7); // 4
    put(&m, "l3", "detached"); // 5: no longer on the lease
    assert_eq!(m.lease_keys(7).unwrap(), vec![b"l1".to_vec(), b"l2".to_vec()]);
    let (r, ev) = run(&m, Command::LeaseRevoke { id: 7 });
    assert_eq!(r.revision, 6);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].events.len(), 2);
    assert!(get(&m, "l", "m", 0).unwrap().kvs.iter().all(|kv| kv.key == b"l3"));
    assert!(m.lease(7).unwrap().is_none());
    assert_eq!(run(&m, Command::LeaseRevoke { id: 7 }).0.result, Err(ApplyError::LeaseNotFound));
}

#[test]
fn batch_commands_see_each_other_and_get_their_own_results() {
    let (_d, m) = open();
    let p = |k: &str| Command::Txn(TxnRequest { success: vec![Op::Put(PutRequest { key: k.into(), value: b"v".to_vec(), ..Default::default() })], ..Default::default() });
    let guarded = Command::Txn(TxnRequest {
        compare: vec![Compare { key: b"a".to_vec(), range_end: vec![], result: CompareResult::Equal, target: CompareTarget::Version(0) }],
        success: vec![Op::Put(PutRequest { key: b"a".to_vec(), value: b"dup".to_vec(), ..Default::default() })],
        failure: vec![],
    });
    let (r, ev) = run(&m, Command::Batch(vec![p("a"), p("b"), guarded]));
    let Ok(CommandResult::Batch(rs)) = r.result else { panic!() };
    assert_eq!(rs.iter().map(|r| r.revision).collect::<Vec<_>>(), vec![2, 3, 3]);
    let Ok(CommandResult::Txn(t)) = &rs[2].result else { panic!() };
    assert!(!t.succeeded, "the guarded create sees the earlier put in the same batch");
    assert_eq!(ev.len(), 2);
    assert_eq!(m.current_revision(), 3);
}

#[test]
fn key_encoding_preserves_order_and_is_prefix_free() {
    let keys: Vec<&[u8]> = vec![b"", b"\0", b"\0\0", b"\0\x01", b"a", b"a\0", b"a\0b", b"a\x01", b"ab", b"b\xff"];
    for w in keys.windows(2) {
        assert!(encode_key(w[0]) < encode_key(w[1]), "{:?} < {:?}", w[0], w[1]);
        assert!(!encode_key(w[1]).starts_with(&encode_key(w[0])));
    }
    assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
    assert_eq!(prefix_end(b"\xff"), vec![0]);
}

/// A deliberately naive model of etcd's MVCC: every revision's full key space.
struct Model {
    states: Vec<BTreeMap<Vec<u8>, KeyValue>>, // states[r] = keys at revision r (index 0 unused)
    compacted: Revision,
}

impl Model {
    fn new() -> Model {
        Model { states: vec![BTreeMap::new(), BTreeMap::new()], compacted: 0 }
    }
    fn rev(&self) -> Revision {
        self.states.len() as Revision - 1
    }
    fn cur(&self) -> &BTreeMap<Vec<u8>, KeyValue> {
        self.states.last().unwrap()
    }
}


#[test]
fn random_operations_match_a_naive_model_at_every_revision() {
    for seed in 1..=20u64 {
        let (d, mut m) = open();
        let mut model = Model::new();
        let mut rng = StdRng::seed_from_u64(seed);
        let keys: Vec<Vec<u8>> = ["a", "a\0", "ab", "b", "b/1", "b/2", "c"].iter().map(|k| k.as_bytes().to_vec()).collect();
        for step in 0..300 {
            let k = keys[rng.random_range(0..keys.len() as u64) as usize].clone();
            match rng.random_range(0..10) {
                0..=4 => {
                    let v = format!("v{step}").into_bytes();
                    // Without watchers that want previous values, put events leave them out,
                    // and a watcher that wants one reads it from storage.
                    let want = match rng.random_range(0..3) {
                        0 => WantPrev::All,
                        1 => WantPrev::In(Arc::new(vec![(b"b".to_vec(), b"c".to_vec())])),
                        _ => WantPrev::In(Arc::new(vec![])),
                    };
                    let want_prev = want.covers(&k);
                    let (r, ev) = run_prev(&m, Command::Txn(TxnRequest { success: vec![Op::Put(PutRequest { key: k.clone(), value: v.clone(), ..Default::default() })], ..Default::default() }), want);
                    let mut next = model.cur().clone();
                    let rev = model.rev() + 1;
                    let old = next.get(&k).cloned();
                    let e = &ev[0].events[0];
                    if want_prev || old.is_none() {
                        assert_eq!(e.prev_kv, old, "seed {seed} step {step}: prev_kv of the event");
                    } else {
                        assert_eq!(e.prev_kv, None, "seed {seed} step {step}: prev_kv left out");
                        assert_eq!(m.prev_version_of(&e.kv).unwrap(), old, "seed {seed} step {step}: prev_kv read later");
                    }
                    next.insert(k.clone(), KeyValue {
                        key: k.clone(),
                        create_revision: old.as_ref().map(|o| o.create_revision).unwrap_or(rev),
                        mod_revision: rev,
                        version: old.map(|o| o.version).unwrap_or(0) + 1,
                        value: v,
                        lease: 0,
                    });
                    model.states.push(next);
                    assert_eq!(r.revision, model.rev(), "seed {seed} step {step}");
                }
                5..=6 => {
                    let end = if rng.random_range(0..2) == 0 { vec![] } else { prefix_end(&k[..1]) };
                    let r = run(&m, Command::Txn(TxnRequest { success: vec![Op::Delete(DeleteRequest { key: k.clone(), range_end: end.clone(), prev_kv: false })], ..Default::default() })).0;
                    let mut next = model.cur().clone();
                    let before = next.len();
                    next.retain(|key, _| !in_range(key, &k, &end));
                    if next.len() != before {
                        model.states.push(next);
                    }
                    assert_eq!(r.revision, model.rev(), "seed {seed} step {step}");
                }
                7 if rng.random_range(0..10) == 0 => {
                    // Reopen: the index of live keys is rebuilt from the stored versions.
                    m.flush().unwrap();
                    drop(m);
                    m = Mvcc::open(d.path()).unwrap();
                    assert_eq!(m.current_revision(), model.rev(), "seed {seed} step {step}: revision after reopen");
                    let all = m.range(&RangeRequest { key: vec![0], range_end: vec![0], ..Default::default() }).unwrap().unwrap();
                    assert_eq!(all.kvs, model.cur().values().cloned().collect::<Vec<_>>(), "seed {seed} step {step}: after reopen");
                }
                7 => {
                    // Compact somewhere in the retained window now and then.
                    if rng.random_range(0..4) == 0 && model.rev() > model.compacted + 1 {
                        let to = model.compacted + 1 + rng.random_range(0..(model.rev() - model.compacted) as u64) as i64;
                        let r = run(&m, Command::Compact { revision: to }).0;
                        assert_eq!(r.result, Ok(CommandResult::Compacted));
                        model.compacted = to;
                        // Physical removal in small steps, sometimes only partly done.
                        for _ in 0..rng.random_range(0..4) {
                            m.compact_step(1 + rng.random_range(0..5) as usize).unwrap();
                        }
                    }
                }
                _ => {
                    // Check a random range at a random retained revision.
                    let lo = model.compacted.max(1);
                    let at = lo + rng.random_range(0..(model.rev() - lo + 1) as u64) as i64;
                    let (start, end) = match rng.random_range(0..3) {
                        0 => (k.clone(), vec![]),
                        1 => (k.clone(), prefix_end(&k[..1])),
                        _ => (vec![0], vec![0]),
                    };
                    let got = m.range(&RangeRequest { key: start.clone(), range_end: end.clone(), revision: at, ..Default::default() }).unwrap().unwrap();
                    let want: Vec<KeyValue> = model.states[at as usize].iter().filter(|(key, _)| in_range(key, &start, &end)).map(|(_, v)| v.clone()).collect();
                    assert_eq!(got.kvs, want, "seed {seed} step {step} range {start:?}..{end:?} at {at}");
                    if at < model.compacted {
                        unreachable!();
                    }
                }
            }
        }
        // Replaying the retained history rebuilds the current state from the compacted one.
        let from = model.compacted.max(1);
        let hist = m.history(from + 1, model.rev(), usize::MAX).unwrap().unwrap();
        let mut state = model.states[from as usize].clone();
        for r in &hist {
            for e in &r.events {
                match e.kind {
                    EventKind::Put => state.insert(e.kv.key.clone(), e.kv.clone()),
                    EventKind::Delete => state.remove(&e.kv.key),
                };
            }
        }
        assert_eq!(&state, model.cur(), "seed {seed}: history replay");
    }
}

#[test]
fn page_reads_stop_one_past_the_limit_at_current_and_past_revisions() {
    let (_d, m) = open();
    for i in 0..10 {
        put(&m, &format!("k{i}"), "v");
    }
    let past = m.current_revision();
    put(&m, "k0", "w");
    for rev in [0, past] {
        let req = RangeRequest { key: "k".into(), range_end: "l".into(), limit: 3, revision: rev, ..Default::default() };
        let (r, _) = m.range_page_at_view(&req).unwrap().unwrap();
        assert_eq!(r.kvs.len(), 3);
        assert!(r.more);
        assert_eq!(r.count, 4, "counted one past the page, not the whole range");
        let exact = m.range(&req).unwrap().unwrap();
        assert_eq!(exact.count, 10);
        let last = RangeRequest { key: "k7".into(), range_end: "l".into(), limit: 3, revision: rev, ..Default::default() };
        let (r, _) = m.range_page_at_view(&last).unwrap().unwrap();
        assert_eq!((r.kvs.len(), r.more), (3, false));
    }
}

#[test]
fn a_store_with_the_old_cur_column_family_opens_without_it() {
    let (d, m) = open();
    put(&m, "a", "1");
    put(&m, "b", "2");
    del(&m, "b", "");
    m.flush().unwrap();
    drop(m);
    {
        // What kuberaft wrote before the in-memory index: a `cur` family with the live values.
        let mut cfs = Mvcc::cf_descriptors();
        cfs.push(ColumnFamilyDescriptor::new(CF_LEGACY_CUR, Options::default()));
        let db = DB::open_cf_descriptors(&Mvcc::db_options(), d.path(), cfs).unwrap();
        let cur = db.cf_handle(CF_LEGACY_CUR).unwrap();
        db.put_cf(cur, b"a", b"stale copy").unwrap();
        db.flush_cf(cur).unwrap();
    }
    let m = Mvcc::open(d.path()).unwrap();
    assert_eq!(values(&get(&m, "a", "", 0).unwrap()), vec![("a".into(), "1".into())]);
    assert!(get(&m, "b", "", 0).unwrap().kvs.is_empty());
    assert_eq!(put(&m, "a", "3").revision, 5);
    let kv = &get(&m, "a", "", 0).unwrap().kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 5, 2));
    drop(m);
    assert!(!DB::list_cf(&Options::default(), d.path()).unwrap().iter().any(|c| c == CF_LEGACY_CUR));
}

#[test]
fn a_store_of_a_newer_format_is_refused_and_an_older_one_upgraded() {
    let (d, m) = open();
    put(&m, "a", "1");
    assert_eq!(m.get_meta(b"format").unwrap(), Some(STORE_FORMAT.to_be_bytes().to_vec()));
    // An older store (no format record) is upgraded at open.
    m.db().delete_cf(m.db().cf_handle(CF_META).unwrap(), b"format").unwrap();
    drop(m);
    let m = Mvcc::open(d.path()).unwrap();
    assert_eq!(m.get_meta(b"format").unwrap(), Some(STORE_FORMAT.to_be_bytes().to_vec()));
    // A newer one is refused, and left as it was.
    m.db().put_cf(m.db().cf_handle(CF_META).unwrap(), b"format", (STORE_FORMAT + 1).to_be_bytes()).unwrap();
    drop(m);
    let Err(e) = Mvcc::open(d.path()) else { panic!("a store of a newer format opened") };
    assert!(e.to_string().contains("newer kuberaft"), "{e}");
    let db = DB::open_cf_descriptors(&Mvcc::db_options(), d.path(), Mvcc::cf_descriptors()).unwrap();
    assert_eq!(db.get_cf(db.cf_handle(CF_META).unwrap(), b"format").unwrap(), Some((STORE_FORMAT + 1).to_be_bytes().to_vec()));
    assert!(db.get_cf(db.cf_handle(CF_VER).unwrap(), b"").is_ok());
}

#[test]
fn keys_only_and_count_only_reads_at_the_current_revision() {
    let (_d, m) = open();
    for k in ["p/1", "p/2", "p/3", "q"] {
        put(&m, k, "value");
    }
    let r = m.range(&RangeRequest { key: "p/".into(), range_end: "p0".into(), keys_only: true, limit: 2, ..Default::default() }).unwrap().unwrap();
    assert_eq!(r.kvs.iter().map(|kv| (kv.key.clone(), kv.value.clone(), kv.version)).collect::<Vec<_>>(), vec![(b"p/1".to_vec(), vec![], 1), (b"p/2".to_vec(), vec![], 1)]);
    assert_eq!((r.count, r.more), (3, true));
    let r = m.range(&RangeRequest { key: "p/".into(), range_end: "p0".into(), count_only: true, ..Default::default() }).unwrap().unwrap();
    assert_eq!((r.kvs.len(), r.count), (0, 3));
    // With a limit, as etcd: still the whole count, and never "more".
    for limit in [1, 3, 5] {
        let req = RangeRequest { key: "p/".into(), range_end: "p0".into(), count_only: true, limit, ..Default::default() };
        let r = m.range(&req).unwrap().unwrap();
        assert_eq!((r.kvs.len(), r.count, r.more), (0, 3, false), "limit {limit}");
        let (r, _) = m.range_page_at_view(&req).unwrap().unwrap();
        assert_eq!((r.kvs.len(), r.count, r.more), (0, 3, false), "paged, limit {limit}");
    }
    // A range whose end sorts before its start is empty, not an error.
    let r = m.range(&RangeRequest { key: "q".into(), range_end: "p".into(), ..Default::default() }).unwrap().unwrap();
    assert_eq!((r.kvs.len(), r.count), (0, 0));
}

#[test]
fn a_txn_that_would_read_a_revision_its_own_write_hides_fails_before_writing() {
    let (_d, m) = open();
    put(&m, "a", "1");
    let txn = |ops: Vec<Op>| Command::Txn(TxnRequest { success: ops, ..Default::default() });
    let p = |k: &str| Op::Put(PutRequest { key: k.into(), value: b"v".to_vec(), ..Default::default() });
    let read_at = |k: &str, rev| Op::Range(RangeRequest { key: k.into(), revision: rev, ..Default::default() });
    // One log entry: the first command writes revision 3, which is only in the batch overlay.
    // Reading it before writing works; after a write it is no longer the latest, so the txn is
    // refused up front instead of failing with its put already in the batch.
    let batch = vec![
        txn(vec![p("b")]),
        txn(vec![read_at("b", 3), p("c")]),
        txn(vec![p("x"), read_at("b", 3)]),
        txn(vec![Op::Txn(TxnRequest { success: vec![p("y")], ..Default::default() }), read_at("b", 4)]),
        txn(vec![p("d")]),
    ];
    let (r, ev) = run(&m, Command::Batch(batch));
    let Ok(CommandResult::Batch(rs)) = r.result else { panic!() };
    assert_eq!(rs.iter().map(|r| r.revision).collect::<Vec<_>>(), vec![3, 4, 4, 4, 5]);
    let Ok(CommandResult::Txn(t)) = &rs[1].result else { panic!("{:?}", rs[1]) };
    let OpResponse::Range(got) = &t.responses[0] else { panic!() };
    assert_eq!(values(got), vec![("b".into(), "v".into())]);
    assert_eq!(rs[2].result, Err(ApplyError::FutureRevision));
    assert_eq!(rs[3].result, Err(ApplyError::FutureRevision));
    // Nothing of the refused txns was written, and every revision has its own events.
    assert!(get(&m, "x", "", 0).unwrap().kvs.is_empty());
    assert!(get(&m, "y", "", 0).unwrap().kvs.is_empty());
    let keys: Vec<(Revision, Vec<u8>)> = ev.iter().flat_map(|r| r.events.iter().map(move |e| (r.revision, e.kv.key.clone()))).collect();
    assert_eq!(keys, vec![(3, b"b".to_vec()), (4, b"c".to_vec()), (5, b"d".to_vec())]);
    let hist = m.history(3, 5, usize::MAX).unwrap().unwrap();
    assert_eq!(hist, ev);
}
