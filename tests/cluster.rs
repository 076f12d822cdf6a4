//! Fault tests on real replica processes: leader kills, kill -9 of every replica, a replica
//! removed and re-added with an empty disk, linearizable reads and watches across leader changes,
//! and refusing to start on a damaged log.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::Cluster;
use etcd_client::{EventType, GetOptions, WatchOptions};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Puts `key=value` and reports whether the store acknowledged it.
async fn put(c: &mut etcd_client::Client, key: &str, value: &str) -> bool {
    tokio::time::timeout(Duration::from_secs(12), c.put(key, value, None)).await.map(|r| r.is_ok()).unwrap_or(false)
}

async fn get_serializable(c: &mut etcd_client::Client, key: &str) -> Option<String> {
    let r = c.get(key, Some(GetOptions::new().with_serializable())).await.ok()?;
    r.kvs().first().map(|kv| kv.value_str().unwrap_or_default().to_string())
}

fn revision_of(c: &Cluster, name: &str) -> i64 {
    c.status(name).and_then(|s| s["revision"].as_i64()).unwrap_or(-1)
}

/// Waits until every named replica reports the same revision as the first one.
fn wait_same_revision(c: &Cluster, names: &[&str], timeout: Duration) -> i64 {
    let t = Instant::now();
    loop {
        let revs: Vec<i64> = names.iter().map(|n| revision_of(c, n)).collect();
        if revs.iter().all(|r| *r == revs[0] && *r > 0) {
            return revs[0];
        }
        assert!(t.elapsed() < timeout, "replicas did not converge: {names:?} at {revs:?}\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The biggest SST file in a (stopped) replica's RocksDB directory.
fn largest_sst(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sst"))
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .unwrap_or_else(|| panic!("{} has an SST file", dir.display()))
}

fn others(c: &Cluster, not: &str) -> Vec<String> {
    (1..=c.replicas).map(|k| format!("n{k}")).filter(|n| n != not).collect()
}

#[test]
fn writes_continue_after_leader_kill_and_restarted_leader_catches_up() {
    let c = Cluster::up(3, common::STORE_ONLY);
    rt().block_on(async {
        let mut cli = c.client(&c.endpoints()).await;
        for i in 0..50 {
            assert!(put(&mut cli, &format!("k{i:03}"), "before").await);
        }
        let (leader, _) = c.wait_leader(Duration::from_secs(10)).expect("leader");
        c.script_ok(&["kill", &leader]);
        let (new_leader, took) = c.wait_leader(Duration::from_secs(10)).expect("a new leader after the kill");
        assert_ne!(new_leader, leader);
        eprintln!("new leader {new_leader} {took:?} after killing {leader}");
        let mut cli = c.client(&others(&c, &leader).iter().map(|n| c.client_url(n)).collect::<Vec<_>>()).await;
        for i in 50..100 {
            assert!(put(&mut cli, &format!("k{i:03}"), "after").await, "write {i} after the kill");
        }
        c.script_ok(&["start", &leader]);
        let names: Vec<String> = (1..=3).map(|k| format!("n{k}")).collect();
        let rev = wait_same_revision(&c, &names.iter().map(String::as_str).collect::<Vec<_>>(), Duration::from_secs(30));
        assert!(rev >= 101, "revision {rev}");
        // The restarted replica serves every write from its own state.
        let mut old = c.client(&[c.client_url(&leader)]).await;
        for i in 0..100 {
            assert!(get_serializable(&mut old, &format!("k{i:03}")).await.is_some(), "k{i:03} on {leader}");
        }
    });
}

#[test]
fn killing_every_replica_at_once_loses_no_acknowledged_write() {
    let c = Cluster::up(3, common::STORE_ONLY);
    rt().block_on(async {
        let eps = c.endpoints();
        let mut acked = Vec::new();
        let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let writer = {
            let eps = eps.clone();
            let pki = c.path().join("pki");
            let progress = progress.clone();
            tokio::spawn(async move {
                let mut cli = common::client_for(&pki, &eps).await;
                let mut ok = Vec::new();
                for i in 0..100_000 {
                    let key = format!("w{i:06}");
                    match tokio::time::timeout(Duration::from_secs(2), cli.put(key.as_str(), "v", None)).await {
                        Ok(Ok(_)) => {
                            ok.push(key);
                            progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        _ => break,
                    }
                }
                ok
            })
        };
        // Kill in the middle of a steady stream of writes (a loaded machine writes slower).
        let started = Instant::now();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        while progress.load(std::sync::atomic::Ordering::Relaxed) <= 10 && started.elapsed() < Duration::from_secs(15) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for n in ["n1", "n2", "n3"] {
            c.script_ok(&["kill", n]);
        }
        acked.extend(writer.await.unwrap());
        assert!(acked.len() > 10, "the writer made progress before the kill ({} writes)", acked.len());
        c.script_ok(&["up", "--replicas", "3"]);
        let mut cli = c.client(&eps).await;
        for k in &acked {
            let r = cli.get(k.as_str(), None).await.expect("linearizable get after restart");
            assert_eq!(r.kvs().len(), 1, "acknowledged write {k} lost after kill -9 of every replica");
        }
    });
}

#[test]
fn replica_removed_and_readded_with_empty_disk_catches_up_by_snapshot() {
    // Small snapshot interval so the leader has purged the log the new replica would need.
    let c = Cluster::up_with(3, 20, common::STORE_ONLY);
    rt().block_on(async {
        let mut cli = c.client(&c.endpoints()).await;
        for i in 0..60 {
            assert!(put(&mut cli, &format!("a{i:03}"), "x").await);
        }
        // The leader is the one removed: it answers the removal (asked through a follower)
        // before it stops, and the other two go on.
        let (gone, _) = c.wait_leader(Duration::from_secs(10)).expect("leader");
        let rest = others(&c, &gone);
        c.script_ok(&["remove", &gone]);
        let members = c.etcdctl_ok(&["member", "list"]);
        assert!(!members.contains(&format!(", {gone},")), "{gone} still listed: {members}");
        let mut cli = c.client(&[c.client_url(&rest[0]), c.client_url(&rest[1])]).await;
        for i in 60..120 {
            assert!(put(&mut cli, &format!("a{i:03}"), "y").await);
        }
        c.script_ok(&["join", &gone]);
        let rev = wait_same_revision(&c, &["n1", "n2", "n3"], Duration::from_secs(60));
        assert!(rev >= 121);
        let metrics = std::process::Command::new("curl").args(["-s", &format!("http://{}:2381/metrics", c.ip(&gone))]).output().unwrap();
        let text = String::from_utf8_lossy(&metrics.stdout);
        let installed: u64 = text
            .lines()
            .find(|l| l.starts_with("kuberaft_snapshots_installed_total"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(installed >= 1, "{gone} caught up without a snapshot:\n{text}");
        let mut back = c.client(&[c.client_url(&gone)]).await;
        assert_eq!(get_serializable(&mut back, "a119").await.as_deref(), Some("y"));
        assert_eq!(get_serializable(&mut back, "a000").await.as_deref(), Some("x"));
        let members = c.etcdctl_ok(&["member", "list"]);
        assert_eq!(members.lines().filter(|l| l.contains("started")).count(), 3, "{members}");
        // The re-added replica takes writes like any other (forwarded to the leader).
        assert!(put(&mut back, "via-rejoined", "z").await);
    });
}

#[test]
fn linearizable_reads_after_leader_change_see_every_acknowledged_write() {
    let c = Cluster::up(3, common::STORE_ONLY);
    rt().block_on(async {
        let (leader, _) = c.wait_leader(Duration::from_secs(10)).expect("leader");
        let followers = others(&c, &leader);
        // Write through every replica, including the leader we are about to kill.
        let mut acked: BTreeMap<String, String> = BTreeMap::new();
        for (i, n) in ["n1", "n2", "n3"].iter().enumerate() {
            let mut cli = c.client(&[c.client_url(n)]).await;
            for j in 0..20 {
                let k = format!("r{i}-{j:02}");
                if put(&mut cli, &k, n).await {
                    acked.insert(k, n.to_string());
                }
            }
        }
        c.script_ok(&["kill", &leader]);
        c.wait_leader(Duration::from_secs(10)).expect("a new leader");
        let mut more = c.client(&[c.client_url(&followers[0])]).await;
        for j in 0..20 {
            let k = format!("after-{j:02}");
            if put(&mut more, &k, "new").await {
                acked.insert(k, "new".into());
            }
        }
        assert_eq!(acked.len(), 80);
        // Every surviving replica, read linearizably right away, has all of them.
        for f in &followers {
            let mut cli = c.client(&[c.client_url(f)]).await;
            for (k, v) in &acked {
                let r = cli.get(k.as_str(), None).await.expect("linearizable get");
                assert_eq!(r.kvs().first().and_then(|kv| kv.value_str().ok()), Some(v.as_str()), "{k} on {f}");
            }
        }
    });
}

#[test]
fn watch_from_old_revision_across_leader_change_delivers_every_event_once_in_order() {
    let c = Cluster::up(3, common::STORE_ONLY);
    rt().block_on(async {
        let (leader, _) = c.wait_leader(Duration::from_secs(10)).expect("leader");
        let follower = others(&c, &leader)[0].clone();
        let mut cli = c.client(&c.endpoints()).await;
        let mut revs: Vec<i64> = Vec::new();
        for i in 0..30 {
            let r = cli.put(format!("w/{i:03}"), "a", None).await.expect("put");
            revs.push(r.header().unwrap().revision());
        }
        let first = revs[0];
        // Watch from the first revision on a replica that survives.
        let mut wcli = c.client(&[c.client_url(&follower)]).await;
        let mut stream = wcli.watch("w/", Some(WatchOptions::new().with_prefix().with_start_revision(first))).await.expect("watch");
        c.script_ok(&["kill", &leader]);
        c.wait_leader(Duration::from_secs(10)).expect("new leader");
        let mut cli = c.client(&others(&c, &leader).iter().map(|n| c.client_url(n)).collect::<Vec<_>>()).await;
        for i in 30..60 {
            let r = cli.put(format!("w/{i:03}"), "b", None).await.expect("put after kill");
            revs.push(r.header().unwrap().revision());
        }
        let del = cli.delete("w/000", None).await.expect("delete");
        revs.push(del.header().unwrap().revision());
        let mut seen: Vec<(i64, String, EventType)> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while seen.len() < 61 && Instant::now() < deadline {
            let msg = tokio::time::timeout(Duration::from_secs(5), stream.message()).await;
            let Ok(Ok(Some(resp))) = msg else { break };
            assert!(!resp.canceled(), "watch canceled: {}", resp.cancel_reason());
            for e in resp.events() {
                let kv = e.kv().unwrap();
                seen.push((kv.mod_revision(), kv.key_str().unwrap().to_string(), e.event_type()));
            }
        }
        let seen_revs: Vec<i64> = seen.iter().map(|s| s.0).collect();
        assert_eq!(seen_revs, revs, "every revision exactly once, in order");
        let keys: BTreeSet<&str> = seen.iter().map(|s| s.1.as_str()).collect();
        assert_eq!(keys.len(), 60);
        assert_eq!(seen.last().unwrap().2, EventType::Delete);
    });
}

#[test]
fn replica_refuses_to_start_on_a_corrupted_log() {
    let c = Cluster::up(3, common::STORE_ONLY);
    rt().block_on(async {
        let mut cli = c.client(&c.endpoints()).await;
        for i in 0..200 {
            assert!(put(&mut cli, &format!("c{i:03}"), &"v".repeat(200)).await);
        }
    });
    wait_same_revision(&c, &["n1", "n2", "n3"], Duration::from_secs(20));
    // Damage the middle of the records in the newest log segment (intact records follow, so
    // this is not the torn end of an unsynced write).
    c.script_ok(&["stop", "n3"]);
    let seg = std::fs::read_dir(c.path().join("n3/data/log"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .max()
        .expect("a raft log segment");
    let mut bytes = std::fs::read(&seg).unwrap();
    // Segments are preallocated with zeros; the records end at the last non-zero byte.
    let end = bytes.iter().rposition(|b| *b != 0).unwrap() + 1;
    let mid = end / 3;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0x5A;
    }
    std::fs::write(&seg, &bytes).unwrap();
    c.script_ok(&["start", "n3"]);
    let exited = c.wait_exited("n3", Duration::from_secs(15));
    let log = std::fs::read_to_string(c.path().join("n3/server.log")).unwrap_or_default();
    assert!(exited, "n3 kept running on a corrupted log:\n{log}");
    assert!(log.to_lowercase().contains("corrupt"), "the error names the corruption:\n{log}");
    // The other two still serve.
    let out = c.etcdctl_at(&format!("{},{}", c.client_url("n1"), c.client_url("n2")), &["put", "still", "ok"]);
    assert!(out.status.success());
}

#[test]
fn learner_catches_up_without_voting_and_is_promoted() {
    let c = Cluster::up(3, common::STORE_ONLY);
    rt().block_on(async {
        let mut cli = c.client(&c.endpoints()).await;
        for i in 0..30 {
            assert!(put(&mut cli, &format!("l{i:02}"), "v").await);
        }
    });
    c.script_ok(&["join", "n4", "--learner"]);
    let rev = wait_same_revision(&c, &["n1", "n2", "n3", "n4"], Duration::from_secs(30));
    assert!(rev >= 31);
    // A new member shows as unstarted until it publishes its name and client URL.
    let t = Instant::now();
    let line = loop {
        let list = c.etcdctl_ok(&["member", "list"]);
        if let Some(l) = list.lines().find(|l| l.contains(", n4,")) {
            break l.to_string();
        }
        assert!(t.elapsed() < Duration::from_secs(15), "n4 never published itself: {list}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(line.contains("started") && line.ends_with("true"), "n4 joined as a learner: {line}");
    let status = c.status("n4").expect("n4 status");
    assert_eq!(status["is_learner"], true);
    let id = line.split(',').next().unwrap().trim().to_string();
    let out = c.etcdctl_ok(&["member", "promote", &id]);
    assert!(out.contains("promoted"), "{out}");
    let list = c.etcdctl_ok(&["member", "list"]);
    let line = list.lines().find(|l| l.contains(", n4,")).unwrap();
    assert!(line.ends_with("false"), "n4 is a voter now: {line}");
    // Promoting a voter is refused with etcd's message.
    let again = c.etcdctl(&["member", "promote", &id]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("can only promote a learner member"));
}

#[test]
fn progress_request_reports_the_current_revision_on_an_idle_watch() {
    let c = Cluster::up(3, common::STORE_ONLY);
    rt().block_on(async {
        let mut cli = c.client(&[c.client_url("n2")]).await;
        let mut last = 0;
        for i in 0..5 {
            last = cli.put(format!("p{i}"), "v", None).await.unwrap().header().unwrap().revision();
        }
        let mut stream = cli.watch("unrelated/", Some(WatchOptions::new().with_prefix())).await.expect("watch");
        stream.request_progress().await.expect("progress request");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "no progress notification");
            let resp = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.expect("timely").expect("ok").expect("open");
            if resp.events().is_empty() && !resp.created() {
                assert_eq!(resp.header().unwrap().revision(), last);
                break;
            }
        }
    });
}

/// A write acknowledged by a follower (which forwarded it to the leader) is already applied
/// there: a serializable read and a watch progress request sent to the same follower right
/// after see it. Before this was guaranteed, the follower answered as soon as the leader did.
#[test]
fn a_follower_acknowledges_a_write_only_after_applying_it() {
    let c = Cluster::up(3, common::STORE_ONLY);
    rt().block_on(async {
        let (leader, _) = c.wait_leader(Duration::from_secs(10)).expect("leader");
        let follower = others(&c, &leader).remove(0);
        let mut cli = c.client(&[c.client_url(&follower)]).await;
        let mut stream = cli.watch("unrelated/", Some(WatchOptions::new().with_prefix())).await.expect("watch");
        for i in 0..200 {
            let k = format!("ryw-{i:03}");
            let v = format!("v{i}");
            let rev = cli.put(k.as_str(), v.as_str(), None).await.expect("put").header().expect("header").revision();
            assert_eq!(get_serializable(&mut cli, &k).await.as_deref(), Some(v.as_str()), "write {i} (revision {rev}) not visible on {follower} right after its ack");
            if i % 20 == 0 {
                stream.request_progress().await.expect("progress request");
                loop {
                    let resp = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.expect("timely").expect("ok").expect("open");
                    if resp.events().is_empty() && !resp.created() {
                        assert!(resp.header().unwrap().revision() >= rev, "progress on {follower} below an acknowledged write: {} < {rev}", resp.header().unwrap().revision());
                        break;
                    }
                }
            }
        }
    });
}

#[test]
fn replica_refuses_to_start_on_a_truncated_state_machine_file() {
    let c = Cluster::up(3, common::STORE_ONLY);
    rt().block_on(async {
        let mut cli = c.client(&c.endpoints()).await;
        for i in 0..100 {
            assert!(put(&mut cli, &format!("t{i:03}"), &"v".repeat(500)).await);
        }
    });
    wait_same_revision(&c, &["n1", "n2", "n3"], Duration::from_secs(20));
    c.script_ok(&["stop", "n2"]);
    let sst = largest_sst(&c.path().join("n2/data/sm-1"));
    let len = std::fs::metadata(&sst).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&sst).unwrap().set_len(len / 2).unwrap();
    c.script_ok(&["start", "n2"]);
    assert!(c.wait_exited("n2", Duration::from_secs(15)), "n2 kept running on a truncated state machine file");
    let last = c.last_log_line("n2").to_lowercase();
    assert!(last.contains("state machine") && last.contains("corrupt"), "the last line names the damage: {last}");
}

#[test]
fn a_removed_replica_stops_itself_with_a_clear_message() {
    let c = Cluster::up(3, common::STORE_ONLY);
    // Remove it once every member has published itself (a removal racing the founders'
    // attribute publishing is not covered here; see the issue note).
    let t = Instant::now();
    let list = loop {
        let list = c.etcdctl_ok(&["member", "list"]);
        if list.lines().filter(|l| l.contains(":2379")).count() == 3 {
            break list;
        }
        assert!(t.elapsed() < Duration::from_secs(15), "members never published: {list}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let id = list.lines().find(|l| l.contains(", n3,")).and_then(|l| l.split(',').next()).expect("n3 listed").trim().to_string();
    let out = c.etcdctl_ok(&["member", "remove", &id]);
    assert!(out.contains("removed"), "{out}");
    assert!(c.wait_exited("n3", Duration::from_secs(40)), "n3 kept running after its removal\n{}", c.logs());
    let last = c.last_log_line("n3");
    assert!(last.contains("removed from the cluster"), "{last}");
    // The two that remain are a working cluster.
    let out = c.etcdctl_at(&format!("{},{}", c.client_url("n1"), c.client_url("n2")), &["put", "after-removal", "ok"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
