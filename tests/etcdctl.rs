//! End-to-end: the real etcdctl 3.4 (Debian's /usr/bin/etcdctl) against a three-replica
//! kuberaft cluster over mutual TLS: KV, txn, watch, leases, compaction, maintenance,
//! membership listing, snapshot save + restore, and the errors etcdctl users rely on.
mod common;

use common::Cluster;
use serde_json::Value;
use std::fs::File;
use std::io::Write;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- helpers

fn cluster3() -> Cluster {
    Cluster::up(3, common::STORE_ONLY)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn describe(out: &Output) -> String {
    format!("status {:?}\nstdout: {}\nstderr: {}", out.status, text(&out.stdout), text(&out.stderr))
}

/// Non-empty stdout lines.
fn lines(s: &str) -> Vec<String> {
    s.lines().filter(|l| !l.is_empty()).map(str::to_string).collect()
}

/// Asserts that etcdctl failed and that its stderr says `needle`.
fn assert_fails_with(out: &Output, needle: &str) {
    assert!(!out.status.success(), "expected failure mentioning {needle:?}, got {}", describe(out));
    assert!(text(&out.stderr).contains(needle), "expected stderr to mention {needle:?}, got {}", describe(out));
}

/// etcdctl with the cluster's TLS files, for commands that need stdin/stdout wiring.
fn etcdctl_cmd(c: &Cluster, endpoints: &str) -> Command {
    let pki = c.path().join("pki");
    let mut cmd = Command::new("etcdctl");
    cmd.env_remove("ETCDCTL_ENDPOINTS")
        .env("ETCDCTL_API", "3")
        .env("ETCDCTL_CACERT", pki.join("ca.crt"))
        .env("ETCDCTL_CERT", pki.join("client.crt"))
        .env("ETCDCTL_KEY", pki.join("client.key"))
        .arg("--endpoints")
        .arg(endpoints);
    cmd
}

/// Runs etcdctl against every endpoint with `input` on stdin.
fn etcdctl_stdin(c: &Cluster, args: &[&str], input: &[u8]) -> Output {
    let mut child = etcdctl_cmd(c, &c.endpoints().join(","))
        .arg("--command-timeout=10s")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn etcdctl");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input).expect("write etcdctl stdin");
    }
    child.wait_with_output().expect("wait etcdctl")
}

fn get_json(c: &Cluster, args: &[&str]) -> Value {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-w", "json"]);
    serde_json::from_str(&c.etcdctl_ok(&a)).expect("get -w json output is JSON")
}

/// The store's current revision (header.revision of a get).
fn current_revision(c: &Cluster) -> i64 {
    get_json(c, &["any-key"])["header"]["revision"].as_i64().expect("header.revision")
}

fn put(c: &Cluster, key: &str, value: &str) {
    let out = c.etcdctl_ok(&["put", key, value]);
    assert_eq!(out.trim(), "OK");
}

/// Standard base64, for comparing against the keys and values of `-w json` output.
fn b64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// `lease grant TTL`, returning the hex lease ID etcdctl prints.
fn grant_lease(c: &Cluster, ttl: u32) -> String {
    let out = c.etcdctl_ok(&["lease", "grant", &ttl.to_string()]);
    // "lease 7b96f4b436041b70 granted with TTL(60s)"
    let words: Vec<&str> = out.split_whitespace().collect();
    assert!(words.len() >= 3 && words[0] == "lease" && words[2] == "granted", "unexpected lease grant output: {out}");
    assert!(out.contains(&format!("TTL({ttl}s)")), "lease granted with another TTL: {out}");
    words[1].to_string()
}

/// Polls `f` until it returns Some or the deadline passes.
fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if t.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A child process killed (and reaped) on drop, also when the test panics.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------- put / get

#[test]
fn put_is_readable_from_every_endpoint() {
    let c = cluster3();
    put(&c, "greeting", "hello");
    for ep in c.endpoints() {
        let out = c.etcdctl_at(&ep, &["get", "greeting"]);
        assert!(out.status.success(), "get at {ep}: {}", describe(&out));
        assert_eq!(lines(&text(&out.stdout)), ["greeting", "hello"], "get at {ep}");
    }
}

#[test]
fn put_overwrites_value() {
    let c = cluster3();
    put(&c, "k", "v1");
    put(&c, "k", "v2");
    assert_eq!(lines(&c.etcdctl_ok(&["get", "k"])), ["k", "v2"]);
}

#[test]
fn get_missing_key_prints_nothing() {
    let c = cluster3();
    assert_eq!(c.etcdctl_ok(&["get", "nope"]).trim(), "");
}

#[test]
fn get_prefix_lists_only_matching_keys_in_key_order() {
    let c = cluster3();
    put(&c, "fruit/pear", "3");
    put(&c, "fruit/apple", "1");
    put(&c, "vegetable/leek", "x");
    put(&c, "fruit/banana", "2");
    put(&c, "fruits", "not under fruit/");
    let out = c.etcdctl_ok(&["get", "fruit/", "--prefix"]);
    assert_eq!(lines(&out), ["fruit/apple", "1", "fruit/banana", "2", "fruit/pear", "3"]);
}

#[test]
fn get_rev_reads_value_at_past_revision() {
    let c = cluster3();
    put(&c, "k", "first");
    let rev_first = current_revision(&c);
    put(&c, "k", "second");
    let rev_second = current_revision(&c);
    put(&c, "k", "third");
    put(&c, "born-later", "x");

    assert_eq!(lines(&c.etcdctl_ok(&["get", "k", &format!("--rev={rev_first}")])), ["k", "first"]);
    assert_eq!(lines(&c.etcdctl_ok(&["get", "k", &format!("--rev={rev_second}")])), ["k", "second"]);
    assert_eq!(lines(&c.etcdctl_ok(&["get", "k"])), ["k", "third"]);
    // A key created after that revision does not exist at it.
    assert_eq!(c.etcdctl_ok(&["get", "born-later", &format!("--rev={rev_first}")]).trim(), "");
}

#[test]
fn get_limit_returns_first_keys_and_json_count_reports_all() {
    let c = cluster3();
    for k in ["p/a", "p/b", "p/c", "p/d"] {
        put(&c, k, &format!("val-{k}"));
    }
    assert_eq!(lines(&c.etcdctl_ok(&["get", "p/", "--prefix", "--limit=2"])), ["p/a", "val-p/a", "p/b", "val-p/b"]);

    let j = get_json(&c, &["p/", "--prefix", "--limit=2"]);
    assert_eq!(j["kvs"].as_array().expect("kvs").len(), 2, "{j}");
    assert_eq!(j["count"].as_i64(), Some(4), "count is the total in range: {j}");
    assert_eq!(j["more"].as_bool(), Some(true), "more keys remain: {j}");
}

#[test]
fn get_keys_only_omits_values() {
    let c = cluster3();
    put(&c, "ko/1", "secret-one");
    put(&c, "ko/2", "secret-two");
    let out = c.etcdctl_ok(&["get", "ko/", "--prefix", "--keys-only"]);
    assert_eq!(lines(&out), ["ko/1", "ko/2"]);
    assert!(!out.contains("secret"), "values printed with --keys-only: {out}");
}

#[test]
fn get_json_reports_header_revision_and_kv_revisions_and_version() {
    let c = cluster3();
    put(&c, "j", "v1");
    let created = current_revision(&c);
    put(&c, "other", "x");
    put(&c, "j", "v2");
    let modified = current_revision(&c);
    put(&c, "other", "y");
    let now = current_revision(&c);
    assert!(created < modified && modified < now, "revisions {created} {modified} {now}");

    let j = get_json(&c, &["j"]);
    assert_eq!(j["header"]["revision"].as_i64(), Some(now), "{j}");
    assert_eq!(j["count"].as_i64(), Some(1), "{j}");
    let kv = &j["kvs"][0];
    assert_eq!(kv["key"].as_str(), Some(b64(b"j").as_str()), "{j}");
    assert_eq!(kv["value"].as_str(), Some(b64(b"v2").as_str()), "{j}");
    assert_eq!(kv["create_revision"].as_i64(), Some(created), "{j}");
    assert_eq!(kv["mod_revision"].as_i64(), Some(modified), "{j}");
    assert_eq!(kv["version"].as_i64(), Some(2), "{j}");
}

// ---------------------------------------------------------------- del

#[test]
fn del_single_key_reports_one_deleted_and_zero_when_absent() {
    let c = cluster3();
    put(&c, "d", "x");
    put(&c, "d2", "stays");
    assert_eq!(c.etcdctl_ok(&["del", "d"]).trim(), "1");
    assert_eq!(c.etcdctl_ok(&["get", "d"]).trim(), "");
    assert_eq!(c.etcdctl_ok(&["del", "d"]).trim(), "0");
    assert_eq!(lines(&c.etcdctl_ok(&["get", "d2"])), ["d2", "stays"], "del of a single key must not act as a prefix");
}

#[test]
fn del_prefix_reports_count_and_keeps_other_keys() {
    let c = cluster3();
    for k in ["tmp/a", "tmp/b", "tmp/c/d"] {
        put(&c, k, "x");
    }
    put(&c, "tmpfile", "keep");
    put(&c, "keep/a", "keep");
    assert_eq!(c.etcdctl_ok(&["del", "tmp/", "--prefix"]).trim(), "3");
    assert_eq!(c.etcdctl_ok(&["get", "tmp/", "--prefix"]).trim(), "");
    assert_eq!(lines(&c.etcdctl_ok(&["get", "", "--prefix", "--keys-only"])), ["keep/a", "tmpfile"]);
}

// ---------------------------------------------------------------- txn

#[test]
fn txn_runs_success_ops_when_compare_holds() {
    let c = cluster3();
    put(&c, "acct", "open");
    let script = "value(\"acct\") = \"open\"\n\nput acct closed\nput audit yes\n\nput acct failed\nput audit no\n\n";
    let out = etcdctl_stdin(&c, &["txn"], script.as_bytes());
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(lines(&text(&out.stdout)), ["SUCCESS", "OK", "OK"], "{}", describe(&out));
    assert_eq!(lines(&c.etcdctl_ok(&["get", "acct"])), ["acct", "closed"]);
    assert_eq!(lines(&c.etcdctl_ok(&["get", "audit"])), ["audit", "yes"]);
}

#[test]
fn txn_runs_failure_ops_when_compare_fails() {
    let c = cluster3();
    put(&c, "acct", "open");
    put(&c, "acct", "frozen");
    // Two compares; the second (version) fails.
    let script = "value(\"acct\") = \"frozen\"\nversion(\"acct\") = \"1\"\n\nput acct closed\n\nput reason frozen\nget acct\n\n";
    let out = etcdctl_stdin(&c, &["txn"], script.as_bytes());
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(lines(&text(&out.stdout)), ["FAILURE", "OK", "acct", "frozen"], "{}", describe(&out));
    assert_eq!(lines(&c.etcdctl_ok(&["get", "acct"])), ["acct", "frozen"], "success ops must not run");
    assert_eq!(lines(&c.etcdctl_ok(&["get", "reason"])), ["reason", "frozen"]);
}

#[test]
fn txn_json_reports_succeeded_and_bumps_revision_once() {
    let c = cluster3();
    put(&c, "t", "0");
    let before = current_revision(&c);
    let script = "mod(\"t\") > \"0\"\n\nput t 1\nput u 1\n\n\n";
    let out = etcdctl_stdin(&c, &["txn", "-w", "json"], script.as_bytes());
    assert!(out.status.success(), "{}", describe(&out));
    let j: Value = serde_json::from_slice(&out.stdout).expect("txn -w json output is JSON");
    assert_eq!(j["succeeded"].as_bool(), Some(true), "{j}");
    assert_eq!(j["header"]["revision"].as_i64(), Some(before + 1), "one txn is one revision: {j}");
    let t = get_json(&c, &["t"]);
    let u = get_json(&c, &["u"]);
    assert_eq!(t["kvs"][0]["mod_revision"].as_i64(), Some(before + 1), "{t}");
    assert_eq!(u["kvs"][0]["mod_revision"].as_i64(), Some(before + 1), "{u}");
}

// ---------------------------------------------------------------- watch

#[test]
fn watch_from_past_revision_with_prefix_lists_events_in_order() {
    let c = cluster3();
    put(&c, "w/1", "a");
    let start = current_revision(&c);
    put(&c, "w/2", "b");
    put(&c, "elsewhere", "ignored");
    assert_eq!(c.etcdctl_ok(&["del", "w/1"]).trim(), "1");
    put(&c, "w/2", "b2");

    let out_path = c.path().join("watch.out");
    let err_path = c.path().join("watch.err");
    let child = etcdctl_cmd(&c, &c.endpoints().join(","))
        .args(["watch", "--prefix", "w/", &format!("--rev={start}")])
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("create watch.out"))
        .stderr(File::create(&err_path).expect("create watch.err"))
        .spawn()
        .expect("spawn etcdctl watch");
    let mut guard = ChildGuard(child);

    // Events after the watch started arrive on the same stream, after the replayed ones; the
    // write outside the prefix between them must not show up.
    put(&c, "w/3", "c");
    put(&c, "elsewhere", "ignored again");
    put(&c, "w/4", "d");

    let expected = [
        "PUT", "w/1", "a", //
        "PUT", "w/2", "b", //
        "DELETE", "w/1", //
        "PUT", "w/2", "b2", //
        "PUT", "w/3", "c", //
        "PUT", "w/4", "d",
    ];
    let got = poll(Duration::from_secs(20), || {
        let l = lines(&std::fs::read_to_string(&out_path).unwrap_or_default());
        (l.len() >= expected.len()).then_some(l)
    });
    let still_running = guard.0.try_wait().expect("try_wait").is_none();
    let _ = guard.0.kill();
    let _ = guard.0.wait();
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let got = got.unwrap_or_else(|| panic!("watch did not print all events in time\nstdout:\n{stdout}\nstderr:\n{stderr}"));
    assert!(still_running, "etcdctl watch exited on its own\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(got, expected, "stderr:\n{stderr}");
}

// ---------------------------------------------------------------- leases

#[test]
fn lease_timetolive_keys_lists_keys_put_with_lease() {
    let c = cluster3();
    let id = grant_lease(&c, 60);
    assert_eq!(c.etcdctl_ok(&["put", "l/a", "1", &format!("--lease={id}")]).trim(), "OK");
    assert_eq!(c.etcdctl_ok(&["put", "l/b", "2", &format!("--lease={id}")]).trim(), "OK");
    let out = c.etcdctl_ok(&["lease", "timetolive", &id, "--keys"]);
    assert!(out.contains(&format!("lease {id} granted with TTL(60s)")), "{out}");
    let keys = out.split("attached keys([").nth(1).and_then(|s| s.split("])").next()).unwrap_or_else(|| panic!("no attached keys in: {out}"));
    let mut keys: Vec<&str> = keys.split_whitespace().collect();
    keys.sort();
    assert_eq!(keys, ["l/a", "l/b"], "{out}");

    let lease_field = get_json(&c, &["l/a"])["kvs"][0]["lease"].as_i64().expect("kv.lease");
    assert_eq!(Some(lease_field as u64), u64::from_str_radix(&id, 16).ok(), "kv carries its lease ID");
    let listed = c.etcdctl_ok(&["lease", "list"]);
    assert!(listed.contains(&id), "lease list: {listed}");
}

#[test]
fn lease_keep_alive_once_renews_lease() {
    let c = cluster3();
    let id = grant_lease(&c, 60);
    let out = c.etcdctl_ok(&["lease", "keep-alive", "--once", &id]);
    assert_eq!(out.trim(), format!("lease {id} keepalived with TTL(60)"));
}

#[test]
fn lease_keep_alive_once_on_unknown_lease_fails() {
    let c = cluster3();
    let out = c.etcdctl(&["lease", "keep-alive", "--once", "1234abcd"]);
    assert_fails_with(&out, "requested lease not found");
}

#[test]
fn lease_revoke_deletes_attached_keys() {
    let c = cluster3();
    let id = grant_lease(&c, 60);
    c.etcdctl_ok(&["put", "r/a", "1", &format!("--lease={id}")]);
    c.etcdctl_ok(&["put", "r/b", "2", &format!("--lease={id}")]);
    put(&c, "r/unleased", "3");
    assert_eq!(c.etcdctl_ok(&["lease", "revoke", &id]).trim(), format!("lease {id} revoked"));
    assert_eq!(lines(&c.etcdctl_ok(&["get", "r/", "--prefix"])), ["r/unleased", "3"]);
    let ttl = c.etcdctl_ok(&["lease", "timetolive", &id]);
    assert!(ttl.contains("already expired"), "revoked lease still alive: {ttl}");
}

#[test]
fn lease_not_kept_alive_expires_with_its_key() {
    let c = cluster3();
    let id = grant_lease(&c, 2);
    assert_eq!(c.etcdctl_ok(&["put", "ephemeral", "x", &format!("--lease={id}")]).trim(), "OK");
    put(&c, "durable", "y");
    let gone = poll(Duration::from_secs(10), || {
        let key = c.etcdctl_ok(&["get", "ephemeral"]);
        let ttl = c.etcdctl_ok(&["lease", "timetolive", &id]);
        (key.trim().is_empty() && ttl.contains("already expired")).then_some(())
    });
    assert!(
        gone.is_some(),
        "lease {id} (TTL 2 s) or its key still there after 10 s: get={:?} timetolive={:?}",
        c.etcdctl_ok(&["get", "ephemeral"]),
        c.etcdctl_ok(&["lease", "timetolive", &id])
    );
    assert_eq!(lines(&c.etcdctl_ok(&["get", "durable"])), ["durable", "y"]);
}

// ---------------------------------------------------------------- compaction

#[test]
fn compaction_makes_older_revisions_unreadable() {
    let c = cluster3();
    put(&c, "c", "old");
    let old = current_revision(&c);
    put(&c, "c", "mid");
    let mid = current_revision(&c);
    put(&c, "c", "new");

    assert_eq!(c.etcdctl_ok(&["compaction", &mid.to_string()]).trim(), format!("compacted revision {mid}"));

    let out = c.etcdctl(&["get", "c", &format!("--rev={old}")]);
    assert_fails_with(&out, "required revision has been compacted");
    // The compaction revision itself and everything after stay readable.
    assert_eq!(lines(&c.etcdctl_ok(&["get", "c", &format!("--rev={mid}")])), ["c", "mid"]);
    assert_eq!(lines(&c.etcdctl_ok(&["get", "c"])), ["c", "new"]);
    // Compacting again at or below the compacted revision is an error.
    let out = c.etcdctl(&["compaction", &old.to_string()]);
    assert_fails_with(&out, "required revision has been compacted");
}

// ---------------------------------------------------------------- maintenance / cluster

#[test]
fn endpoint_status_json_shows_three_endpoints_and_one_leader() {
    let c = cluster3();
    put(&c, "s", "x");
    let out = c.etcdctl_ok(&["endpoint", "status", "-w", "json"]);
    let arr: Vec<Value> = serde_json::from_str(&out).expect("endpoint status -w json is a JSON array");
    assert_eq!(arr.len(), 3, "{out}");
    let mut eps: Vec<String> = arr.iter().map(|e| e["Endpoint"].as_str().expect("Endpoint").to_string()).collect();
    eps.sort();
    let mut want = c.endpoints();
    want.sort();
    assert_eq!(eps, want);

    let leaders: Vec<u64> = arr.iter().map(|e| e["Status"]["leader"].as_u64().expect("Status.leader")).collect();
    assert!(leaders.iter().all(|l| *l == leaders[0] && *l != 0), "endpoints disagree on the leader: {out}");
    let members: Vec<u64> = arr.iter().map(|e| e["Status"]["header"]["member_id"].as_u64().expect("member_id")).collect();
    let mut distinct = members.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "member IDs must differ: {out}");
    assert_eq!(members.iter().filter(|m| **m == leaders[0]).count(), 1, "exactly one endpoint is the leader: {out}");
    let cluster_ids: Vec<u64> = arr.iter().map(|e| e["Status"]["header"]["cluster_id"].as_u64().expect("cluster_id")).collect();
    assert!(cluster_ids.iter().all(|id| *id == cluster_ids[0]), "{out}");

    // The leader named by etcdctl is the one the cluster script reports.
    let leader_ep = &arr.iter().find(|e| e["Status"]["header"]["member_id"].as_u64() == Some(leaders[0])).unwrap()["Endpoint"];
    let script_leader = c.leader().expect("a leader");
    assert_eq!(leader_ep.as_str(), Some(c.client_url(&script_leader).as_str()), "{out}");
}

#[test]
fn endpoint_health_reports_every_endpoint_healthy() {
    let c = cluster3();
    let out = c.etcdctl_ok(&["endpoint", "health", "-w", "json"]);
    let arr: Vec<Value> = serde_json::from_str(&out).expect("endpoint health -w json is a JSON array");
    let mut healthy: Vec<String> = arr
        .iter()
        .filter(|e| e["health"].as_bool() == Some(true))
        .map(|e| e["endpoint"].as_str().expect("endpoint").to_string())
        .collect();
    healthy.sort();
    let mut want = c.endpoints();
    want.sort();
    assert_eq!(healthy, want, "{out}");
}

#[test]
fn endpoint_health_fails_for_killed_replica() {
    let c = cluster3();
    let victim = if c.leader().as_deref() == Some("n3") { "n2" } else { "n3" };
    c.script_ok(&["kill", victim]);
    let out = c.etcdctl_at(&c.client_url(victim), &["endpoint", "health", "--dial-timeout=1s"]);
    assert!(!out.status.success(), "health of a dead replica succeeded: {}", describe(&out));
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&c.client_url(victim)) && stderr.contains("is unhealthy"), "{}", describe(&out));
}

#[test]
fn member_list_shows_three_started_members_with_urls() {
    let c = cluster3();
    // Like etcd, each member publishes its client URLs through Raft shortly after it starts.
    let published = poll(Duration::from_secs(30), || {
        let out = c.etcdctl_ok(&["member", "list"]);
        let rows = lines(&out);
        (rows.len() == 3 && rows.iter().all(|r| r.split(", ").nth(4).is_some_and(|u| !u.is_empty()))).then_some(out)
    });
    let out = published.unwrap_or_else(|| panic!("client URLs never published: {}", c.etcdctl_ok(&["member", "list"])));
    let mut rows: Vec<Vec<String>> = lines(&out).iter().map(|l| l.split(", ").map(str::to_string).collect()).collect();
    assert_eq!(rows.len(), 3, "{out}");
    rows.sort_by(|a, b| a[2].cmp(&b[2]));
    let mut ids = Vec::new();
    for (row, name) in rows.iter().zip(["n1", "n2", "n3"]) {
        // ID, status, name, peer URLs, client URLs, is learner
        assert_eq!(row.len(), 6, "{out}");
        assert!(u64::from_str_radix(&row[0], 16).is_ok_and(|id| id != 0), "member ID {:?}: {out}", row[0]);
        ids.push(row[0].clone());
        assert_eq!(row[1], "started", "{out}");
        assert_eq!(row[2], name, "{out}");
        assert_eq!(row[3], format!("https://{}:2380", c.ip(name)), "{out}");
        assert_eq!(row[4], c.client_url(name), "{out}");
        assert_eq!(row[5], "false", "{out}");
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "member IDs must differ: {out}");
}

// ---------------------------------------------------------------- snapshot / restore

#[test]
fn snapshot_save_restores_into_fresh_replica_with_same_keys() {
    let c = cluster3();
    put(&c, "snap/a", "1");
    put(&c, "snap/b", "2");
    put(&c, "snap/a", "1b");
    put(&c, "gone", "x");
    c.etcdctl_ok(&["del", "gone"]);
    put(&c, "zzz", "last");
    let before = get_json(&c, &["", "--prefix"]);

    let file = c.path().join("backup.db");
    let file_s = file.to_str().unwrap();
    let one = c.client_url("n1");
    let out = c.etcdctl_at(&one, &["snapshot", "save", file_s]);
    assert!(out.status.success(), "snapshot save: {}", describe(&out));
    assert!(text(&out.stdout).contains(&format!("Snapshot saved at {file_s}")), "{}", describe(&out));
    assert!(std::fs::metadata(&file).map(|m| m.len() > 0).unwrap_or(false), "snapshot file is empty or missing");

    // A fresh single replica restored from the file, on an address inside this cluster's
    // subnet that its certificate covers (deploy/cluster signs n1..n(replicas+4)).
    let ip = c.ip("n7");
    let pki = c.path().join("pki");
    let data = c.path().join("restored");
    let log = File::create(c.path().join("restored.log")).expect("create restored.log");
    let p = |f: &str| pki.join(f);
    let server = Command::new(common::kuberaft_bin())
        .arg("server")
        .arg("--restore")
        .arg(&file)
        .arg("--data-dir")
        .arg(&data)
        .args(["--name", "r1"])
        .args(["--listen-client", &format!("{ip}:2379")])
        .args(["--listen-peer", &format!("{ip}:2380")])
        .args(["--listen-metrics", &format!("{ip}:2381")])
        .args(["--listen-api", &format!("{ip}:6443"), "--no-kubernetes-api"])
        .arg("--cacert")
        .arg(p("ca.crt"))
        .arg("--cert")
        .arg(p("server.crt"))
        .arg("--key")
        .arg(p("server.key"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn kuberaft server --restore");
    let mut restored = ChildGuard(server);
    let restored_ep = format!("https://{ip}:2379");
    let restored_log = || std::fs::read_to_string(c.path().join("restored.log")).unwrap_or_default();

    let after = poll(Duration::from_secs(30), || {
        if let Ok(Some(st)) = restored.0.try_wait() {
            panic!("restored replica exited with {st}:\n{}", restored_log());
        }
        let out = c.etcdctl_at(&restored_ep, &["--dial-timeout=1s", "--command-timeout=2s", "get", "", "--prefix", "-w", "json"]);
        out.status.success().then(|| serde_json::from_slice::<Value>(&out.stdout).expect("json"))
    })
    .unwrap_or_else(|| panic!("restored replica never served reads:\n{}", restored_log()));

    assert_eq!(after["kvs"], before["kvs"], "restored keys, values, revisions and versions differ");
    assert_eq!(after["header"]["revision"], before["header"]["revision"], "restored store revision differs");
    assert_eq!(lines(&c.etcdctl_ok(&["get", "", "--prefix", "--keys-only"])), ["snap/a", "snap/b", "zzz"]);
    let plain = c.etcdctl_at(&restored_ep, &["get", "", "--prefix"]);
    assert_eq!(lines(&text(&plain.stdout)), ["snap/a", "1b", "snap/b", "2", "zzz", "last"], "{}", describe(&plain));

    // It is a new one-member cluster, and writable.
    let members = c.etcdctl_at(&restored_ep, &["member", "list"]);
    let members = lines(&text(&members.stdout));
    assert_eq!(members.len(), 1, "{members:?}");
    assert!(members[0].contains(", r1, "), "{members:?}");
    let out = c.etcdctl_at(&restored_ep, &["put", "after-restore", "ok"]);
    assert!(out.status.success(), "put on restored replica: {}", describe(&out));
    // ...and independent of the original cluster.
    assert_eq!(c.etcdctl_ok(&["get", "after-restore"]).trim(), "");
    drop(restored);
}

// ---------------------------------------------------------------- bad input

#[test]
fn put_with_empty_key_fails_with_key_not_provided() {
    let c = cluster3();
    let out = c.etcdctl(&["put", "", "x"]);
    assert_fails_with(&out, "key is not provided");
}

#[test]
fn put_value_over_request_limit_fails_with_request_too_large() {
    let c = cluster3();
    // 1.6 MiB: over the server's 1.5 MiB request limit, under etcdctl's 2 MiB send limit.
    let path = c.path().join("big-value");
    std::fs::write(&path, vec![b'x'; 1_677_722]).expect("write big value");
    let out = etcdctl_cmd(&c, &c.endpoints().join(","))
        .args(["--command-timeout=10s", "put", "big"])
        .stdin(File::open(&path).expect("open big value"))
        .output()
        .expect("run etcdctl put");
    assert_fails_with(&out, "request is too large");
    assert_eq!(c.etcdctl_ok(&["get", "big"]).trim(), "", "a rejected put must not be stored");
}

#[test]
fn put_value_from_stdin_is_stored_verbatim() {
    let c = cluster3();
    let value: Vec<u8> = (0..100_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let out = etcdctl_stdin(&c, &["put", "from-stdin"], &value);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(text(&out.stdout).trim(), "OK");
    let j = get_json(&c, &["from-stdin"]);
    assert_eq!(j["kvs"][0]["value"].as_str(), Some(b64(&value).as_str()), "stored value differs from stdin");
}

#[test]
fn put_value_near_request_limit_is_replicated_to_every_replica() {
    let c = cluster3();
    // 1 MiB: well under the 1.5 MiB request limit.
    let value = vec![b'y'; 1 << 20];
    let out = etcdctl_stdin(&c, &["put", "medium"], &value);
    assert!(out.status.success(), "put of a 1 MiB value: {}", describe(&out));
    let want = b64(&value);
    for name in ["n1", "n2", "n3"] {
        // A serializable get answers from that replica's own state machine.
        let ep = c.client_url(name);
        let got = poll(Duration::from_secs(20), || {
            let out = c.etcdctl_at(&ep, &["get", "medium", "--consistency=s", "-w", "json"]);
            let j: Value = serde_json::from_slice(&out.stdout).ok()?;
            (j["kvs"][0]["value"].as_str() == Some(want.as_str())).then_some(())
        });
        assert!(got.is_some(), "{name} never applied the 1 MiB put; status: {:?}", c.script_ok(&["status"]));
    }
    // The cluster still works afterwards.
    put(&c, "after", "ok");
}

#[test]
fn get_future_revision_fails_with_future_revision() {
    let c = cluster3();
    put(&c, "f", "x");
    let future = current_revision(&c) + 1000;
    let out = c.etcdctl(&["get", "f", &format!("--rev={future}")]);
    assert_fails_with(&out, "future revision");
}

#[test]
fn only_administrator_certificates_reach_the_etcd_api() {
    let c = cluster3();
    c.etcdctl_ok(&["put", "guarded", "v"]);
    // A Kubernetes user's certificate from the same CA (what `kuberaft kubeconfig` issues).
    let kc = c.path().join("mallory.kubeconfig");
    let out = Command::new(common::kuberaft_bin()).args(["kubeconfig", "--pki"]).arg(c.path().join("pki")).args(["--user", "mallory", "--groups", "system:nodes", "--out"]).arg(&kc).output().expect("kubeconfig");
    assert!(out.status.success(), "{}", describe(&out));
    let text = std::fs::read_to_string(&kc).expect("read kubeconfig");
    let field = |name: &str| -> String {
        let line = text.lines().find(|l| l.trim_start().starts_with(name)).expect("field");
        let b64 = line.split_once(':').expect("value").1.trim();
        let out = Command::new("base64").arg("-d").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().and_then(|mut ch| {
            use std::io::Write;
            ch.stdin.take().expect("stdin").write_all(b64.as_bytes())?;
            ch.wait_with_output()
        });
        String::from_utf8(out.expect("base64").stdout).expect("pem")
    };
    let (crt, key) = (c.path().join("mallory.crt"), c.path().join("mallory.key"));
    std::fs::write(&crt, field("client-certificate-data")).expect("write");
    std::fs::write(&key, field("client-key-data")).expect("write");
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(c.client_url("n1"))
        .arg("--cacert")
        .arg(c.path().join("pki/ca.crt"))
        .arg("--cert")
        .arg(&crt)
        .arg("--key")
        .arg(&key)
        .args(["--command-timeout=5s", "get", "guarded"])
        .output()
        .expect("etcdctl");
    assert!(!out.status.success(), "a user certificate read the store: {}", describe(&out));
    assert!(text_of(&out.stderr).contains("permission denied"), "{}", describe(&out));
}

fn text_of(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
