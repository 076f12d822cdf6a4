//! Jobs and CronJobs end to end against three replicas, driven with kubectl: a Job runs to
//! completion with bounded parallelism and counts each pod once, failed pods are retried with
//! backoff up to backoffLimit, activeDeadlineSeconds ends a Job, suspend holds it, a TTL
//! deletes it; CronJobs start Jobs on schedule under each concurrency policy, keep their
//! history limits and stop when suspended.
//!
//! Pods run on hollow nodes (in this process); failing pods on a Node this test registers,
//! whose "kubelet" is a thread marking its pods Failed.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, Hollow, Cluster};
use serde_json::Value;

/// A thread standing in for kubelets: every 300 ms, `decide(pod)` may name a status to patch.
struct FakeKubelet(Arc<AtomicBool>);

impl FakeKubelet {
    fn start(c: &Cluster, name: &str, decide: impl Fn(&Value) -> Option<Value> + Send + 'static) -> FakeKubelet {
        Self::start_at(c, "n1", name, decide)
    }

    fn start_at(c: &Cluster, replica: &str, name: &str, decide: impl Fn(&Value) -> Option<Value> + Send + 'static) -> FakeKubelet {
        let stop = Arc::new(AtomicBool::new(false));
        let (kubeconfig, cache, flag) = (c.path().join(replica).join("kubeconfig"), c.path().join("kcache").join(name), stop.clone());
        std::thread::spawn(move || {
            let kubectl = |args: &[&str]| std::process::Command::new("kubectl").arg("--kubeconfig").arg(&kubeconfig).arg("--cache-dir").arg(&cache).args(args).output();
            while !flag.load(Ordering::Relaxed) {
                if let Ok(out) = kubectl(&["get", "pods", "-A", "-o", "json"]) {
                    let list: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
                    for p in list["items"].as_array().into_iter().flatten() {
                        if let Some(status) = decide(p) {
                            let (ns, pod) = (p["metadata"]["namespace"].as_str().unwrap_or("default"), p["metadata"]["name"].as_str().unwrap_or_default());
                            let _ = kubectl(&["patch", "pod", pod, "-n", ns, "--subresource=status", "--type=merge", "-p", &serde_json::json!({"status": status}).to_string()]);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        FakeKubelet(stop)
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn phase(p: &Value) -> &str {
    p["status"]["phase"].as_str().unwrap_or("")
}

/// A terminal pod status, as a kubelet reports it.
fn finished_status(ok: bool) -> Value {
    let now = std::process::Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]).output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
    let (ph, reason, code) = if ok { ("Succeeded", "Completed", 0) } else { ("Failed", "Error", 1) };
    serde_json::json!({"phase": ph, "containerStatuses": [{"name": "c", "image": "busybox", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"terminated": {"exitCode": code, "reason": reason, "startedAt": now, "finishedAt": now}}}]})
}

fn json(c: &Cluster, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend_from_slice(&["-o", "json"]);
    let out = c.kubectl(&all);
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn items(v: &Value) -> Vec<Value> {
    v["items"].as_array().cloned().unwrap_or_default()
}

fn condition<'a>(job: &'a Value, ty: &str) -> Option<&'a Value> {
    job["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == ty && c["status"] == "True")
}

fn event_messages(c: &Cluster, ns: &str) -> String {
    c.kubectl_ok(&["get", "events", "-n", ns, "-o", "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}"])
}

/// `kubectl wait --for=condition=<cond> job/<name>`; on a timeout, shows the Job and its pods.
fn wait_job(c: &Cluster, cond: &str, name: &str, secs: u64) {
    let out = c.kubectl(&["wait", &format!("--for=condition={cond}"), &format!("job/{name}"), &format!("--timeout={secs}s")]);
    if !out.status.success() {
        let job = String::from_utf8_lossy(&c.kubectl(&["get", "job", name, "-o", "yaml"]).stdout).into_owned();
        let pods = String::from_utf8_lossy(&c.kubectl(&["get", "pods", "-l", &format!("job-name={name}"), "-o", "yaml"]).stdout).into_owned();
        panic!("job {name} not {cond}: {}\n{job}\n{pods}", String::from_utf8_lossy(&out.stderr));
    }
}

fn job_yaml(name: &str, spec: &str, pod_spec: &str) -> String {
    format!("apiVersion: batch/v1\nkind: Job\nmetadata: {{name: {name}}}\nspec:\n{spec}  template:\n    spec:\n      restartPolicy: Never\n{pod_spec}      containers:\n      - {{name: c, image: busybox}}\n")
}

#[test]
fn jobs_complete_with_bounded_parallelism_suspend_and_expire_after_their_ttl() {
    let c = Cluster::up(3, &[]);
    c.wait_api();
    let _nodes = Hollow::start(&c, &["--name", "hollow", "--hollow-count", "2", "--heartbeat-seconds", "2"]);
    eventually("2 nodes", Duration::from_secs(30), || {
        let n = items(&json(&c, &["get", "nodes"])).len();
        if n == 2 { Ok(()) } else { Err(format!("{n} nodes")) }
    });

    // A watcher of how many pods of `work` run at once.
    let stop = Arc::new(AtomicBool::new(false));
    let (peak, seen) = (Arc::new(std::sync::Mutex::new(0usize)), Arc::new(std::sync::Mutex::new(BTreeSet::<String>::new())));
    let watcher = {
        let (kubeconfig, cache, stop, peak, seen) = (c.path().join("n1").join("kubeconfig"), c.path().join("kcache").join("watch"), stop.clone(), peak.clone(), seen.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let out = std::process::Command::new("kubectl").arg("--kubeconfig").arg(&kubeconfig).arg("--cache-dir").arg(&cache).args(["get", "pods", "-l", "batch.kubernetes.io/job-name=work", "-o", "json"]).output();
                if let Ok(out) = out {
                    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
                    let pods = items(&v);
                    let running = pods.iter().filter(|p| !matches!(phase(p), "Succeeded" | "Failed") && p["metadata"]["deletionTimestamp"].is_null()).count();
                    let mut pk = peak.lock().unwrap();
                    *pk = (*pk).max(running);
                    seen.lock().unwrap().extend(pods.iter().filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string)));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    // completions 3, parallelism 2: never more than 2 at once; Complete; each pod counted once.
    c.kubectl_ok(&["create", "-f", &c.file("work.yaml", &job_yaml("work", "  completions: 3\n  parallelism: 2\n", ""))]);
    wait_job(&c, "complete", "work", 60);
    stop.store(true, Ordering::Relaxed);
    watcher.join().expect("watcher");
    let job = json(&c, &["get", "job", "work"]);
    let uid = job["metadata"]["uid"].as_str().expect("uid").to_string();
    assert_eq!((job["status"]["succeeded"].as_i64(), job["status"]["failed"].as_i64().unwrap_or(0), job["status"]["active"].as_i64().unwrap_or(0)), (Some(3), 0, 0), "{}", job["status"]);
    assert!(condition(&job, "SuccessCriteriaMet").is_some() && condition(&job, "Complete").is_some(), "{}", job["status"]);
    assert_eq!(condition(&job, "Complete").unwrap()["reason"], "CompletionsReached");
    assert!(job["status"]["startTime"].is_string() && job["status"]["completionTime"].is_string(), "{}", job["status"]);
    let unc = &job["status"]["uncountedTerminatedPods"];
    assert!(unc["succeeded"].as_array().is_none_or(|a| a.is_empty()) && unc["failed"].as_array().is_none_or(|a| a.is_empty()), "{unc}");
    let peak = *peak.lock().unwrap();
    assert!((1..=2).contains(&peak), "peak of {peak} running pods");
    let pods = items(&json(&c, &["get", "pods", "-l", &format!("batch.kubernetes.io/controller-uid={uid}")]));
    assert_eq!(pods.len(), 3, "{:?}", seen.lock().unwrap());
    for p in &pods {
        assert_eq!(phase(p), "Succeeded");
        let labels = &p["metadata"]["labels"];
        assert_eq!((labels["job-name"].as_str(), labels["batch.kubernetes.io/job-name"].as_str(), labels["controller-uid"].as_str()), (Some("work"), Some("work"), Some(uid.as_str())));
        let owner = &p["metadata"]["ownerReferences"][0];
        assert_eq!((owner["kind"].as_str(), owner["name"].as_str(), owner["controller"].as_bool()), (Some("Job"), Some("work"), Some(true)));
        assert!(p["metadata"]["finalizers"].as_array().is_none_or(|f| f.is_empty()), "tracking finalizer left on {}", p["metadata"]);
        assert!(p["metadata"]["name"].as_str().unwrap_or_default().starts_with("work-"));
    }
    let row = c.kubectl_ok(&["get", "job", "work", "--no-headers"]);
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[..3], ["work", "Complete", "3/3"], "{row}");
    let events = event_messages(&c, "default");
    assert!(events.contains("SuccessfulCreate: Created pod: work-") && events.contains("Completed: Job completed"), "{events}");

    // Indexed: one pod per index, each with its index and hostname; completedIndexes.
    c.kubectl_ok(&["create", "-f", &c.file("ix.yaml", &job_yaml("ix", "  completionMode: Indexed\n  completions: 3\n  parallelism: 3\n", ""))]);
    wait_job(&c, "complete", "ix", 40);
    let ix = json(&c, &["get", "job", "ix"]);
    assert_eq!((ix["status"]["completedIndexes"].as_str(), ix["status"]["succeeded"].as_i64()), (Some("0-2"), Some(3)), "{}", ix["status"]);
    let mut indexes: Vec<(String, String)> = items(&json(&c, &["get", "pods", "-l", "job-name=ix"]))
        .iter()
        .map(|p| (p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"].as_str().unwrap_or_default().to_string(), p["spec"]["hostname"].as_str().unwrap_or_default().to_string()))
        .collect();
    indexes.sort();
    assert_eq!(indexes, [("0", "ix-0"), ("1", "ix-1"), ("2", "ix-2")].map(|(a, b)| (a.to_string(), b.to_string())));

    // Suspended: no pods until resumed; then it runs to completion.
    c.kubectl_ok(&["create", "-f", &c.file("later.yaml", &job_yaml("later", "  suspend: true\n", ""))]);
    eventually("Suspended condition", Duration::from_secs(20), || {
        let j = json(&c, &["get", "job", "later"]);
        if condition(&j, "Suspended").is_some() { Ok(()) } else { Err(j["status"].to_string()) }
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(items(&json(&c, &["get", "pods", "-l", "job-name=later"])).len(), 0);
    assert!(json(&c, &["get", "job", "later"])["status"]["startTime"].is_null());
    c.kubectl_ok(&["patch", "job", "later", "--type=merge", "-p", r#"{"spec":{"suspend":false}}"#]);
    wait_job(&c, "complete", "later", 30);
    let events = event_messages(&c, "default");
    assert!(events.contains("Suspended: Job suspended") && events.contains("Resumed: Job resumed"), "{events}");

    // ttlSecondsAfterFinished: the Job and its pods go once it has finished.
    c.kubectl_ok(&["create", "-f", &c.file("short.yaml", &job_yaml("short", "  ttlSecondsAfterFinished: 2\n", ""))]);
    wait_job(&c, "complete", "short", 30);
    let finished = Instant::now();
    eventually("job short deleted with its pods", Duration::from_secs(30), || {
        let gone = !c.kubectl(&["get", "job", "short"]).status.success();
        let pods = items(&json(&c, &["get", "pods", "-l", "job-name=short"])).len();
        if gone && pods == 0 { Ok(()) } else { Err(format!("job gone: {gone}, pods: {pods}")) }
    });
    assert!(finished.elapsed() >= Duration::from_secs(1), "deleted before its TTL");
    // The others have no TTL and stay.
    c.kubectl_ok(&["get", "job", "work", "later"]);
}

const FAST_ELECTION: &[&str] = &["--leader-elect-lease-duration", "2", "--leader-elect-renew-deadline", "1.5", "--leader-elect-retry-period", "0.3"];

fn fake_node(c: &Cluster, replica: &str, name: &str) {
    let node = format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: {{{name}: \"yes\"}}\nspec:\n  taints: [{{key: {name}, value: \"yes\", effect: NoSchedule}}]\nstatus:\n  allocatable: {{cpu: \"4\", memory: 8Gi, pods: \"110\"}}\n  capacity: {{cpu: \"4\", memory: 8Gi, pods: \"110\"}}\n  conditions: [{{type: Ready, status: \"True\"}}]\n");
    let out = c.kubectl_at(replica, &["create", "-f", &c.file(&format!("{name}.yaml"), &node)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn pinned(node: &str) -> String {
    format!("      nodeSelector: {{{node}: \"yes\"}}\n      tolerations: [{{key: {node}, operator: Equal, value: \"yes\", effect: NoSchedule}}]\n")
}

/// The controller manager's replica dies while a Job runs; its successor finishes the Job and
/// every pod is counted exactly once (the tracking finalizer and uncountedTerminatedPods).
#[test]
fn a_job_survives_controller_manager_failover_counting_each_pod_once() {
    let c = Cluster::up(3, FAST_ELECTION);
    c.wait_api();
    let holder = |replica: &str| String::from_utf8_lossy(&c.kubectl_at(replica, &["get", "lease", "kuberaft-controller-manager", "-n", "kube-system", "-o", "jsonpath={.spec.holderIdentity}"]).stdout).trim().to_string();
    let victim = eventually("a controller-manager leader", Duration::from_secs(30), || {
        let h = holder("n1");
        if h.is_empty() { Err("none".into()) } else { Ok(h) }
    });
    let survivor = ["n1", "n2", "n3"].into_iter().find(|n| *n != victim).expect("survivor").to_string();
    let k = |args: &[&str]| {
        let out = c.kubectl_at(&survivor, args);
        assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    fake_node(&c, &survivor, "slow");
    // Pods on `slow` run for 1.5 s, then succeed.
    let started = std::sync::Mutex::new(std::collections::HashMap::<String, Instant>::new());
    let _kubelet = FakeKubelet::start_at(&c, &survivor, "slow", move |p| {
        if p["spec"]["nodeName"] != "slow" || matches!(phase(p), "Succeeded" | "Failed") {
            return None;
        }
        let mut seen = started.lock().unwrap();
        let t = *seen.entry(p["metadata"]["uid"].as_str().unwrap_or_default().to_string()).or_insert_with(Instant::now);
        if t.elapsed() >= Duration::from_millis(1500) { Some(finished_status(true)) } else if phase(p) == "Pending" { Some(serde_json::json!({"phase": "Running"})) } else { None }
    });
    k(&["create", "-f", &c.file("steady.yaml", &job_yaml("steady", "  completions: 10\n  parallelism: 3\n", &pinned("slow")))]);
    eventually("3 pods counted", Duration::from_secs(40), || {
        let n = k(&["get", "job", "steady", "-o", "jsonpath={.status.succeeded}"]).trim().parse::<i64>().unwrap_or(0);
        if n >= 3 { Ok(()) } else { Err(format!("{n}")) }
    });
    c.script_ok(&["kill", &victim]);
    let out = c.kubectl_at(&survivor, &["wait", "--for=condition=complete", "job/steady", "--timeout=60s"]);
    let job: Value = serde_json::from_str(&k(&["get", "job", "steady", "-o", "json"])).expect("job json");
    assert!(out.status.success(), "{}", job["status"]);
    assert_ne!(holder(&survivor), victim);
    let pods: Value = serde_json::from_str(&k(&["get", "pods", "-l", "job-name=steady", "-o", "json"])).expect("pods json");
    let pods = items(&pods);
    let succeeded = pods.iter().filter(|p| phase(p) == "Succeeded").count() as i64;
    assert_eq!((job["status"]["succeeded"].as_i64(), job["status"]["failed"].as_i64().unwrap_or(0)), (Some(10), 0), "{}", job["status"]);
    assert_eq!(succeeded, 10, "{} pods, {succeeded} succeeded", pods.len());
    assert!(pods.iter().all(|p| p["metadata"]["finalizers"].as_array().is_none_or(|f| f.is_empty())));
}

#[test]
fn failed_pods_back_off_until_the_limit_and_deadlines_end_jobs() {
    let c = Cluster::up(3, &[]);
    c.wait_api();
    // A Ready node only the failing pods may use; its "kubelet" fails every pod bound to it.
    fake_node(&c, "n1", "failnode");
    let _kubelet = FakeKubelet::start(&c, "failer", |p| {
        (p["spec"]["nodeName"] == "failnode" && !matches!(phase(p), "Succeeded" | "Failed")).then(|| finished_status(false))
    });

    c.kubectl_ok(&["create", "-f", &c.file("flaky.yaml", &job_yaml("flaky", "  backoffLimit: 1\n", &pinned("failnode")))]);
    // Deadline: pods that can never be scheduled, a 4 s deadline.
    let nowhere = "      nodeSelector: {nowhere: \"true\"}\n";
    c.kubectl_ok(&["create", "-f", &c.file("slow.yaml", &job_yaml("slow", "  parallelism: 2\n  completions: 4\n  activeDeadlineSeconds: 4\n", nowhere))]);

    wait_job(&c, "failed", "slow", 40);
    let slow = json(&c, &["get", "job", "slow"]);
    assert_eq!(condition(&slow, "Failed").unwrap()["reason"], "DeadlineExceeded", "{}", slow["status"]);
    assert_eq!(condition(&slow, "FailureTarget").unwrap()["reason"], "DeadlineExceeded");
    assert_eq!((slow["status"]["failed"].as_i64(), slow["status"]["active"].as_i64().unwrap_or(0)), (Some(2), 0), "{}", slow["status"]);
    eventually("slow's pods deleted", Duration::from_secs(20), || {
        let n = items(&json(&c, &["get", "pods", "-l", "job-name=slow"])).len();
        if n == 0 { Ok(()) } else { Err(format!("{n} pods")) }
    });

    wait_job(&c, "failed", "flaky", 50);
    let flaky = json(&c, &["get", "job", "flaky"]);
    let failed = condition(&flaky, "Failed").expect("Failed");
    assert_eq!((failed["reason"].as_str(), failed["message"].as_str()), (Some("BackoffLimitExceeded"), Some("Job has reached the specified backoff limit")));
    assert_eq!((flaky["status"]["failed"].as_i64(), flaky["status"]["succeeded"].as_i64().unwrap_or(0)), (Some(2), 0), "{}", flaky["status"]);
    let created = |p: &Value| p["metadata"]["creationTimestamp"].as_str().unwrap_or_default().to_string();
    let mut pods = items(&json(&c, &["get", "pods", "-l", "job-name=flaky"]));
    pods.sort_by_key(created);
    assert_eq!(pods.len(), 2, "{pods:?}");
    assert!(pods.iter().all(|p| phase(p) == "Failed"));
    // The retry waited for the 10 s backoff after the first failure.
    let secs = |p: &Value| -> i64 {
        let out = std::process::Command::new("date").args(["-u", "-d", &created(p), "+%s"]).output().expect("date");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
    };
    assert!(secs(&pods[1]) - secs(&pods[0]) >= 10, "retry after {} s", secs(&pods[1]) - secs(&pods[0]));
    let row = c.kubectl_ok(&["get", "job", "flaky", "--no-headers"]);
    assert!(row.split_whitespace().take(3).eq(["flaky", "Failed", "0/1"]), "{row}");
    let events = event_messages(&c, "default");
    assert!(events.contains("BackoffLimitExceeded: Job has reached the specified backoff limit"), "{events}");
    assert!(events.contains("DeadlineExceeded: Job was active longer than specified deadline"), "{events}");
    // No further pods.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(items(&json(&c, &["get", "pods", "-l", "job-name=flaky"])).len(), 2);
}

#[test]
fn pod_failure_and_success_policies_end_jobs_early_or_ignore_failures() {
    let c = Cluster::up(3, &[]);
    c.wait_api();
    fake_node(&c, "n1", "policynode");
    // Pods of "fatal" exit 42; the first two pods of "tolerant" exit 3, later ones succeed.
    let tolerant_failures = Arc::new(AtomicUsize::new(0));
    let seen = tolerant_failures.clone();
    let _kubelet = FakeKubelet::start(&c, "policy", move |p| {
        if p["spec"]["nodeName"] != "policynode" || matches!(phase(p), "Succeeded" | "Failed") {
            return None;
        }
        let exit = |code: i64| {
            let mut st = finished_status(false);
            st["containerStatuses"][0]["state"]["terminated"]["exitCode"] = code.into();
            st
        };
        match p["metadata"]["labels"]["job-name"].as_str() {
            Some("fatal") => Some(exit(42)),
            Some("tolerant") if seen.fetch_add(1, Ordering::SeqCst) < 2 => Some(exit(3)),
            Some("tolerant") => Some(finished_status(true)),
            // Index 0 of "leader" succeeds; the other indexes never finish.
            Some("leader") if p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] == "0" => Some(finished_status(true)),
            _ => None,
        }
    });
    let pin = pinned("policynode");
    let policy = |action: &str, code: i64| format!("  podFailurePolicy:\n    rules:\n    - action: {action}\n      onExitCodes: {{containerName: c, operator: In, values: [{code}]}}\n");
    c.kubectl_ok(&["create", "-f", &c.file("fatal.yaml", &job_yaml("fatal", &format!("  backoffLimit: 6\n{}", policy("FailJob", 42)), &pin))]);
    c.kubectl_ok(&["create", "-f", &c.file("tolerant.yaml", &job_yaml("tolerant", &format!("  backoffLimit: 0\n{}", policy("Ignore", 3)), &pin))]);
    let leader = "  completionMode: Indexed\n  completions: 3\n  parallelism: 3\n  successPolicy:\n    rules:\n    - succeededIndexes: \"0\"\n";
    c.kubectl_ok(&["create", "-f", &c.file("leader.yaml", &job_yaml("leader", leader, &pin))]);

    wait_job(&c, "failed", "fatal", 40);
    let fatal = json(&c, &["get", "job", "fatal"]);
    let failed = condition(&fatal, "Failed").expect("Failed");
    let pod = items(&json(&c, &["get", "pods", "-l", "job-name=fatal"]));
    assert_eq!(pod.len(), 1, "no retry after a FailJob rule matched: {pod:?}");
    let pod_name = pod[0]["metadata"]["name"].as_str().unwrap_or_default();
    assert_eq!(failed["reason"], "PodFailurePolicy", "{}", fatal["status"]);
    assert_eq!(failed["message"].as_str().unwrap_or_default(), format!("Container c for pod default/{pod_name} failed with exit code 42 matching FailJob rule at index 0"));
    assert_eq!(fatal["status"]["failed"].as_i64(), Some(1), "{}", fatal["status"]);

    // backoffLimit 0, yet two failures: they matched the Ignore rule and were not counted.
    wait_job(&c, "complete", "tolerant", 40);
    let tolerant = json(&c, &["get", "job", "tolerant"]);
    assert_eq!((tolerant["status"]["succeeded"].as_i64(), tolerant["status"]["failed"].as_i64().unwrap_or(0)), (Some(1), 0), "{}", tolerant["status"]);
    assert_eq!(tolerant_failures.load(Ordering::SeqCst), 3);
    let pods = items(&json(&c, &["get", "pods", "-l", "job-name=tolerant"]));
    assert_eq!(pods.iter().filter(|p| phase(p) == "Failed").count(), 2, "{pods:?}");

    // successPolicy: index 0 alone completes the Job; the other indexes are stopped.
    wait_job(&c, "complete", "leader", 40);
    let leader = json(&c, &["get", "job", "leader"]);
    let met = condition(&leader, "SuccessCriteriaMet").expect("SuccessCriteriaMet");
    assert_eq!((met["reason"].as_str(), met["message"].as_str()), (Some("SuccessPolicy"), Some("Matched rules at index 0")), "{}", leader["status"]);
    assert_eq!(condition(&leader, "Complete").expect("Complete")["reason"], "SuccessPolicy");
    assert_eq!((leader["status"]["succeeded"].as_i64(), leader["status"]["completedIndexes"].as_str()), (Some(1), Some("0")), "{}", leader["status"]);
    eventually("leader's other pods stopped", Duration::from_secs(20), || {
        let pods = items(&json(&c, &["get", "pods", "-l", "job-name=leader"]));
        let running = pods.iter().filter(|p| phase(p) != "Succeeded" && p["metadata"]["deletionTimestamp"].is_null()).count();
        if running == 0 { Ok(()) } else { Err(format!("{running} still running")) }
    });
}

/// Runs the Job, CronJob and garbage collector controllers in this process, the CronJob
/// controller on `clock`.
fn start_controllers(c: &Cluster, clock: Arc<dyn controllers::cronjob::Clock>) -> tokio::runtime::Runtime {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "controllers=info".into())).with_test_writer().try_init();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let kubeconfig = c.path().join("n1").join("kubeconfig");
    let client = rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(&kubeconfig).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.expect("config");
        kube::Client::try_from(config).expect("client")
    });
    let informers = {
        let _in_rt = rt.enter();
        controllers::informer::Informers::spawn(&client)
    };
    rt.spawn(controllers::job::run(client.clone(), informers));
    rt.spawn(controllers::gc::run(client.clone()));
    rt.spawn(controllers::cronjob::run_with_clock(client, clock));
    rt
}

/// A clock running `SPEED` times faster than real time from now on: a minute of schedule
/// passes in 60/SPEED real seconds.
struct FastClock {
    origin: Instant,
    start: controllers::cronjob::Timestamp,
}

const SPEED: u32 = 20;

impl controllers::cronjob::Clock for FastClock {
    fn now(&self) -> controllers::cronjob::Timestamp {
        let fast = self.origin.elapsed() * SPEED;
        self.start.checked_add(fast).unwrap_or(self.start)
    }
    fn real(&self, d: Duration) -> Duration {
        d / SPEED
    }
}

fn cronjob_yaml(name: &str, policy: &str, extra: &str, outcome: &str) -> String {
    format!(
        "apiVersion: batch/v1\nkind: CronJob\nmetadata: {{name: {name}}}\nspec:\n  schedule: \"*/1 * * * *\"\n  timeZone: Etc/UTC\n  concurrencyPolicy: {policy}\n{extra}  jobTemplate:\n    metadata:\n      labels: {{cron: {name}}}\n    spec:\n      backoffLimit: 0\n      template:\n        metadata:\n          labels: {{outcome: \"{outcome}\", cron: {name}}}\n        spec:\n          restartPolicy: Never\n          containers:\n          - {{name: c, image: busybox}}\n"
    )
}

fn jobs_of(c: &Cluster, cron: &str) -> Vec<Value> {
    items(&json(c, &["get", "jobs", "-l", &format!("cron={cron}")])).into_iter().filter(|j| j["metadata"]["deletionTimestamp"].is_null()).collect()
}

fn names(jobs: &[Value]) -> BTreeSet<String> {
    jobs.iter().filter_map(|j| j["metadata"]["name"].as_str().map(str::to_string)).collect()
}

#[test]
fn cronjobs_follow_their_schedule_concurrency_policy_history_limits_and_suspend() {
    let c = Cluster::up(3, common::NO_CONTROLLERS);
    c.wait_api();
    let clock = Arc::new(FastClock { origin: Instant::now(), start: controllers::cronjob::Timestamp::now() });
    let _rt = start_controllers(&c, clock);
    // No scheduler or node runs here: this "kubelet" finishes pods by their outcome label.
    let _kubelet = FakeKubelet::start(&c, "finisher", |p| {
        let outcome = p["metadata"]["labels"]["outcome"].as_str().unwrap_or("");
        (matches!(outcome, "succeed" | "fail") && !matches!(phase(p), "Succeeded" | "Failed") && p["metadata"]["deletionTimestamp"].is_null()).then(|| finished_status(outcome == "succeed"))
    });

    c.kubectl_ok(&["create", "-f", &c.file("forbid.yaml", &cronjob_yaml("forbid", "Forbid", "", "never"))]);
    c.kubectl_ok(&["create", "-f", &c.file("allow.yaml", &cronjob_yaml("allow", "Allow", "", "never"))]);
    c.kubectl_ok(&["create", "-f", &c.file("replace.yaml", &cronjob_yaml("replace", "Replace", "", "never"))]);
    c.kubectl_ok(&["create", "-f", &c.file("hist.yaml", &cronjob_yaml("hist", "Allow", "  successfulJobsHistoryLimit: 2\n", "succeed"))]);
    c.kubectl_ok(&["create", "-f", &c.file("failing.yaml", &cronjob_yaml("failing", "Allow", "  failedJobsHistoryLimit: 1\n", "fail"))]);

    // Replace: always one Job, a different one each minute.
    let mut replaced = BTreeSet::new();
    eventually("Replace cycling through 3 jobs", Duration::from_secs(40), || {
        let jobs = jobs_of(&c, "replace");
        // The old one is deleted before the new one is created.
        assert!(jobs.len() <= 1, "Replace has {:?} at once", names(&jobs));
        replaced.extend(names(&jobs));
        if replaced.len() >= 3 { Ok(()) } else { Err(format!("{replaced:?}")) }
    });

    // By now at least 3 minutes have passed on the schedule's clock.
    let forbid = jobs_of(&c, "forbid");
    assert_eq!(forbid.len(), 1, "Forbid started more than one: {:?}", names(&forbid));
    let allow = jobs_of(&c, "allow");
    assert!(allow.len() >= 3, "Allow: {:?}", names(&allow));
    let allow_cj = json(&c, &["get", "cronjob", "allow"]);
    let active: BTreeSet<String> = allow_cj["status"]["active"].as_array().into_iter().flatten().filter_map(|a| a["name"].as_str().map(str::to_string)).collect();
    assert!(active.len() >= 3 && active.is_subset(&names(&jobs_of(&c, "allow"))), "active {active:?}");
    assert!(allow_cj["status"]["lastScheduleTime"].is_string());

    // Names are the scheduled minute, and the annotation says which time that was.
    for j in &allow {
        let name = j["metadata"]["name"].as_str().unwrap_or_default();
        let minutes: i64 = name.strip_prefix("allow-").and_then(|m| m.parse().ok()).unwrap_or_else(|| panic!("job name {name}"));
        let ts = j["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"].as_str().unwrap_or_default();
        let out = std::process::Command::new("date").args(["-u", "-d", &format!("@{}", minutes * 60), "+%Y-%m-%dT%H:%M:%SZ"]).output().expect("date");
        assert_eq!(ts, String::from_utf8_lossy(&out.stdout).trim(), "{name}");
        assert_eq!(j["metadata"]["ownerReferences"][0]["kind"], "CronJob");
        assert_eq!(j["metadata"]["ownerReferences"][0]["controller"], true);
    }

    // History limits: once enough ran (then suspended, so that none is still running), 2
    // complete and 1 failed Job are kept.
    eventually("4 hist and 2 failing jobs started", Duration::from_secs(40), || {
        let created = event_messages(&c, "default");
        let count = |p: &str| created.lines().filter(|l| l.starts_with(&format!("SuccessfulCreate: Created job {p}-"))).count();
        if count("hist") >= 4 && count("failing") >= 2 { Ok(()) } else { Err(format!("hist {}, failing {}", count("hist"), count("failing"))) }
    });
    for cj in ["hist", "failing"] {
        c.kubectl_ok(&["patch", "cronjob", cj, "--type=merge", "-p", r#"{"spec":{"suspend":true}}"#]);
    }
    eventually("history trimmed to the limits", Duration::from_secs(40), || {
        let hist = jobs_of(&c, "hist");
        let failing = jobs_of(&c, "failing");
        let events = event_messages(&c, "default");
        let done_hist = hist.iter().filter(|j| condition(j, "Complete").is_some()).count();
        let done_fail = failing.iter().filter(|j| condition(j, "Failed").is_some()).count();
        if (hist.len(), done_hist, failing.len(), done_fail) == (2, 2, 1, 1) && events.contains("SuccessfulDelete: Deleted job hist-") && events.contains("SuccessfulDelete: Deleted job failing-") {
            Ok(())
        } else {
            Err(format!("hist {:?} ({done_hist} complete), failing {:?} ({done_fail} failed)", names(&hist), names(&failing)))
        }
    });
    let hist_cj = json(&c, &["get", "cronjob", "hist"]);
    assert!(hist_cj["status"]["lastSuccessfulTime"].is_string(), "{}", hist_cj["status"]);
    let events = event_messages(&c, "default");
    assert!(events.contains("JobAlreadyActive: Not starting job because prior execution is running and concurrency policy is Forbid"), "{events}");
    assert!(events.contains("SawCompletedJob: Saw completed job: hist-"), "{events}");
    assert!(events.contains("SuccessfulDelete: Deleted job replace-"), "{events}");
    assert_eq!(jobs_of(&c, "forbid").len(), 1);

    // Suspend: no new Jobs for the next few scheduled minutes.
    c.kubectl_ok(&["patch", "cronjob", "allow", "--type=merge", "-p", r#"{"spec":{"suspend":true}}"#]);
    std::thread::sleep(Duration::from_secs(1));
    let before = names(&jobs_of(&c, "allow"));
    std::thread::sleep(Duration::from_secs(60 / u64::from(SPEED) * 3 + 1));
    assert_eq!(names(&jobs_of(&c, "allow")), before, "a suspended CronJob started a Job");
    let row = c.kubectl_ok(&["get", "cronjob", "allow", "--no-headers"]);
    assert!(row.starts_with("allow") && row.contains("*/1 * * * *") && row.contains("Etc/UTC") && row.contains("True"), "{row}");
}
