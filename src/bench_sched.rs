//! `kuberaft bench sched`: scheduling throughput and latency of one kuberaft replica (its own
//! scheduler and controller manager, as `kuberaft server` runs them) with thousands of hollow
//! nodes (one `kuberaft node --hollow` child process, nodes spread over four zones). Per node count: pods of each
//! kind created as fast as bounded concurrency allows, timed from the first create to the last
//! binding a watch shows, with per-pod create-to-bound latency; then a 1,000-replica Deployment
//! until it is fully available. Prints one markdown table.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use raftstore::bench::Procs;
use serde_json::json;

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub kuberaft_bin: PathBuf,
    /// Scratch directory (wiped first).
    pub work_dir: PathBuf,
    /// Hollow node counts, one cluster each.
    pub nodes: Vec<usize>,
    /// Pods per kind.
    pub pods: usize,
    /// plain, node-affinity, pod-anti-affinity, spread.
    pub kinds: Vec<String>,
    /// Replicas of the Deployment measured (0: skip).
    pub deployment_replicas: usize,
    /// Concurrent pod creates.
    pub clients: usize,
}

const IP: &str = "127.0.6.11";
const ZONES: usize = 4;
pub const KINDS: [&str; 4] = ["plain", "node-affinity", "pod-anti-affinity", "spread"];

fn start_replica(o: &BenchOptions, dir: &Path, pki: &Path) -> anyhow::Result<Procs> {
    std::fs::create_dir_all(dir)?;
    let log = std::fs::File::create(dir.join("server.log"))?;
    let child = Command::new(&o.kuberaft_bin)
        .args(["server", "--name", "s1"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen-client", &format!("{IP}:2379"), "--listen-peer", &format!("{IP}:2380"), "--listen-metrics", &format!("{IP}:2381"), "--listen-api", &format!("{IP}:6443")])
        .args(["--initial-cluster", &format!("s1={IP}:2380")])
        .arg("--cacert")
        .arg(pki.join("ca.crt"))
        .arg("--cert")
        .arg(pki.join("server.crt"))
        .arg("--key")
        .arg(pki.join("server.key"))
        .env("KUBERAFT_LOG", "warn,sched::scheduler=info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", o.kuberaft_bin.display()))?;
    Ok(Procs(vec![child]))
}

/// The scheduler's own time (its "scheduling stats" log lines) since `from` bytes of the log:
/// (attempts, scheduling-cycle µs, watch events applied, µs applying them).
fn scheduler_stats(log: &Path, from: usize) -> (u64, u64, u64, u64) {
    let text = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(text.get(from..).unwrap_or(&[]));
    let mut sum = (0, 0, 0, 0);
    for line in text.lines().filter(|l| l.contains("scheduling stats")) {
        let field = |name: &str| -> u64 {
            line.split_whitespace().find_map(|w| w.strip_prefix(name).and_then(|v| v.strip_prefix('='))).and_then(|v| v.parse().ok()).unwrap_or(0)
        };
        sum.0 += field("attempts");
        sum.1 += field("cycle_us");
        sum.2 += field("events");
        sum.3 += field("events_us");
    }
    sum
}

fn log_len(log: &Path) -> usize {
    std::fs::metadata(log).map(|m| m.len() as usize).unwrap_or(0)
}

fn write_kubeconfig(pki: &Path, out: &Path) -> anyhow::Result<()> {
    let p = |f: &str| pki.join(f).display().to_string();
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://{IP}:6443\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    client-certificate: {}\n    client-key: {}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n",
        p("ca.crt"),
        p("client.crt"),
        p("client.key")
    );
    std::fs::write(out, text)?;
    Ok(())
}

/// The hollow nodes, in one process, spread round robin over ZONES zones zone-0, zone-1, ...
/// (topology.kubernetes.io/zone). One process, not one per zone: each process watches every
/// bound pod (there is no field selector for "on one of my nodes"), so every extra process
/// would receive, decode and have the API server encrypt every pod change once more.
fn start_hollow(o: &BenchOptions, dir: &Path, kubeconfig: &Path, nodes: usize, procs: &mut Procs) -> anyhow::Result<()> {
    let zones: Vec<String> = (0..ZONES.min(nodes)).map(|z| format!("zone-{z}")).collect();
    let log = std::fs::File::create(dir.join("hollow.log"))?;
    let child = Command::new(&o.kuberaft_bin)
        .args(["node", "--hollow", "--hollow-count", &nodes.to_string(), "--name", "hollow", "--zones", &zones.join(",")])
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env("KUBERAFT_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start hollow nodes: {e}"))?;
    procs.0.push(child);
    Ok(())
}

async fn wait_api(client: &kube::Client) -> anyhow::Result<()> {
    let t = Instant::now();
    loop {
        match Api::<Namespace>::all(client.clone()).get("default").await {
            Ok(_) => return Ok(()),
            Err(e) if t.elapsed() > Duration::from_secs(60) => anyhow::bail!("the API did not come up within 60 s: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn ready(n: &Node) -> bool {
    n.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn wait_nodes(client: &kube::Client, want: usize) -> anyhow::Result<f64> {
    let t = Instant::now();
    let api = Api::<Node>::all(client.clone());
    loop {
        let n = api.list(&ListParams::default()).await.map(|l| l.items.iter().filter(|n| ready(n)).count()).unwrap_or(0);
        if n >= want {
            return Ok(t.elapsed().as_secs_f64());
        }
        if t.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("only {n} of {want} hollow nodes became Ready within 600 s");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Waits until the work that joining nodes cause (pod CIDRs, RegisteredNode events, taint
/// changes, first status writes) is done and only heartbeats remain: the store's write rate,
/// read from list resourceVersions, stays near what the nodes' Lease renewals and status
/// rewrites alone make (HEARTBEAT_SECONDS, STATUS_SECONDS) for three seconds in a row. Pods
/// created earlier would compete with that one-off work and measure the cluster's start-up
/// instead of the scheduler.
async fn settle(client: &kube::Client, nodes: usize) {
    const HEARTBEAT_SECONDS: f64 = 10.0;
    const STATUS_SECONDS: f64 = 60.0;
    let baseline = nodes as f64 / HEARTBEAT_SECONDS + nodes as f64 / STATUS_SECONDS;
    let limit = baseline * 1.5 + 50.0;
    let api = Api::<Namespace>::all(client.clone());
    let rv = || async { api.list_metadata(&ListParams::default().limit(1)).await.ok().and_then(|l| l.metadata.resource_version).and_then(|v| v.parse::<u64>().ok()) };
    let t = Instant::now();
    let (mut last, mut at, mut quiet) = (rv().await, Instant::now(), 0);
    while t.elapsed() < Duration::from_secs(180) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = rv().await;
        let rate = match (last, now) {
            (Some(a), Some(b)) => b.saturating_sub(a) as f64 / at.elapsed().as_secs_f64(),
            _ => f64::INFINITY,
        };
        (last, at) = (now, Instant::now());
        quiet = if rate <= limit { quiet + 1 } else { 0 };
        if quiet >= 3 {
            eprintln!("sched bench: settled after {:.1} s ({rate:.0} writes/s; heartbeats alone ~{baseline:.0}/s)", t.elapsed().as_secs_f64());
            return;
        }
    }
    eprintln!("sched bench: still more than {limit:.0} writes/s after 180 s; measuring anyway");
}

/// The pod of one kind (scheduler_perf's templates, roughly).
/// `groups`: anti-affinity pods repel only their own group, so that every group fits.
fn pod(kind: &str, name: &str, i: usize, groups: usize) -> Pod {
    let mut spec = json!({"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10",
        "resources": {"requests": {"cpu": "10m", "memory": "10Mi"}}}]});
    let group = format!("g{}", i % groups.max(1));
    let labels = json!({"app": format!("bench-{kind}"), "group": group});
    match kind {
        "node-affinity" => {
            spec["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["zone-0", "zone-1"]}]}]}}});
        }
        "pod-anti-affinity" => {
            spec["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": format!("bench-{kind}"), "group": group}}, "topologyKey": "kubernetes.io/hostname"}]}});
        }
        "spread" => {
            spec["topologySpreadConstraints"] = json!([{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": {"matchLabels": {"app": format!("bench-{kind}")}}}]);
        }
        _ => {}
    }
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}, "spec": spec})).expect("pod template")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct KindResult {
    pods: usize,
    bound: usize,
    secs: f64,
    create_secs: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: usize,
    /// CPU time per bound pod of the replica and of the hollow-node process, first create to
    /// last bound (µs).
    cpu_us: [f64; 2],
}

/// CPU seconds (user + system, all threads) a process has used, from /proc/PID/stat. Linux
/// reports them in USER_HZ, which is 100 on every architecture we build for.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it are fixed (utime is the 14th).
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

async fn ensure_namespace(client: &kube::Client, ns: &str) -> anyhow::Result<()> {
    let obj: Namespace = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))?;
    match Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Creates `count` pods of `kind` in their own namespace and times them until bound.
async fn run_kind(client: &kube::Client, kind: &str, count: usize, clients: usize, nodes: usize, pids: [u32; 2]) -> anyhow::Result<KindResult> {
    // At most half the nodes per anti-affinity group.
    let groups = count.div_ceil((nodes / 2).max(1));
    let ns = format!("bench-{kind}");
    ensure_namespace(client, &ns).await?;
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let bound: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    // The watch first, so that no binding goes unseen.
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let watch = {
        let (api, bound) = (api.clone(), bound.clone());
        tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            let mut s = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
            while let Some(ev) = s.next().await {
                let p = match ev {
                    Ok(watcher::Event::InitDone) => {
                        if let Some(t) = ready_tx.take() {
                            let _ = t.send(());
                        }
                        continue;
                    }
                    Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => p,
                    _ => continue,
                };
                if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some() {
                    if let Some(n) = p.metadata.name {
                        bound.lock().expect("bound").entry(n).or_insert_with(Instant::now);
                    }
                }
            }
        })
    };
    let _ = tokio::time::timeout(Duration::from_secs(30), ready_rx).await;

    let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let cpu_start = pids.map(cpu_seconds);
    let workers: Vec<_> = (0..clients.max(1))
        .map(|_| {
            let (api, created, next, errors, kind) = (api.clone(), created.clone(), next.clone(), errors.clone(), kind.to_string());
            let groups = if kind == "pod-anti-affinity" { groups } else { 1 };
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return;
                    }
                    let name = format!("p-{i}");
                    let p = pod(&kind, &name, i, groups);
                    let t = Instant::now();
                    match api.create(&PostParams::default(), &p).await {
                        Ok(_) => {
                            created.lock().expect("created").insert(name, t);
                        }
                        Err(e) => {
                            if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                                eprintln!("sched bench: create {name}: {e}");
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await?;
    }
    let create_secs = start.elapsed().as_secs_f64();
    let want = created.lock().expect("created").len();
    // Until every created pod is bound, or no progress for 60 s.
    let (mut last_n, mut last_change) = (0, Instant::now());
    loop {
        let n = bound.lock().expect("bound").len();
        if n >= want {
            break;
        }
        if n != last_n {
            (last_n, last_change) = (n, Instant::now());
        }
        if last_change.elapsed() > Duration::from_secs(60) {
            eprintln!("sched bench: {kind}: {n} of {want} pods bound, no progress for 60 s");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu_end = pids.map(cpu_seconds);
    watch.abort();
    let bound = bound.lock().expect("bound").clone();
    let created = created.lock().expect("created").clone();
    let last = bound.values().max().copied().unwrap_or(start);
    let mut lat: Vec<f64> = created.iter().filter_map(|(n, c)| bound.get(n).map(|b| b.saturating_duration_since(*c).as_secs_f64() * 1000.0)).collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    Ok(KindResult {
        pods: count,
        bound: lat.len(),
        secs: last.saturating_duration_since(start).as_secs_f64(),
        create_secs,
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        errors: errors.load(Ordering::Relaxed),
        cpu_us: [0, 1].map(|i| match (cpu_start[i], cpu_end[i]) {
            (Some(a), Some(b)) => (b - a) * 1e6 / lat.len().max(1) as f64,
            _ => f64::NAN,
        }),
    })
}

/// Creates a Deployment of `replicas` and returns the seconds until all are available.
async fn run_deployment(client: &kube::Client, replicas: usize) -> anyhow::Result<(f64, i32)> {
    let ns = "bench-deploy";
    ensure_namespace(client, ns).await?;
    let d: Deployment = serde_json::from_value(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "d"}}, "template": {"metadata": {"labels": {"app": "d"}},
            "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10", "resources": {"requests": {"cpu": "10m", "memory": "10Mi"}}}]}}}}))?;
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let t = Instant::now();
    api.create(&PostParams::default(), &d).await?;
    loop {
        let avail = api.get("d").await.ok().and_then(|d| d.status).and_then(|s| s.available_replicas).unwrap_or(0);
        if avail as usize >= replicas {
            return Ok((t.elapsed().as_secs_f64(), avail));
        }
        if t.elapsed() > Duration::from_secs(300) {
            return Ok((f64::NAN, avail));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default()
}

fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

pub async fn run(o: BenchOptions) -> anyhow::Result<String> {
    for k in &o.kinds {
        if !KINDS.contains(&k.as_str()) {
            anyhow::bail!("unknown pod kind {k:?} (one of {})", KINDS.join(", "));
        }
    }
    let _ = std::fs::remove_dir_all(&o.work_dir);
    std::fs::create_dir_all(&o.work_dir)?;
    let pki = o.work_dir.join("pki");
    raftstore::certs::generate(&pki, &[IP.to_string()])?;
    let kubeconfig = o.work_dir.join("kubeconfig");
    write_kubeconfig(&pki, &kubeconfig)?;
    let mut rows: Vec<String> = Vec::new();
    for &nodes in &o.nodes {
        let dir = o.work_dir.join(format!("n{nodes}"));
        let mut procs = start_replica(&o, &dir, &pki)?;
        let config = sched::client::config_from_files(&format!("https://{IP}:6443"), &pki.join("ca.crt"), &pki.join("client.crt"), &pki.join("client.key")).await?;
        let client = kube::Client::try_from(config)?;
        wait_api(&client).await?;
        start_hollow(&o, &dir, &kubeconfig, nodes, &mut procs)?;
        eprintln!("sched bench: waiting for {nodes} hollow nodes");
        let up = wait_nodes(&client, nodes).await?;
        eprintln!("sched bench: {nodes} nodes Ready after {up:.1} s (load {})", load());
        settle(&client, nodes).await;
        for kind in &o.kinds {
            eprintln!("sched bench: {nodes} nodes, {} {kind} pods", o.pods);
            let before = load();
            let log = dir.join("server.log");
            let from = log_len(&log);
            let pids = [procs.0[0].id(), procs.0[1].id()];
            let r = run_kind(&client, kind, o.pods, o.clients, nodes, pids).await?;
            // The last stats line of this kind comes within STATS_EVERY.
            tokio::time::sleep(Duration::from_secs(6)).await;
            let (attempts, cycle_us, events, events_us) = scheduler_stats(&log, from);
            let per_pod = (cycle_us + events_us) as f64 / (r.bound.max(1)) as f64;
            let rate = r.bound as f64 / r.secs.max(1e-9);
            let target = if kind == "plain" { if rate >= 1500.0 { "≥ 1,500 (met)" } else { "≥ 1,500 (**not met**)" } } else { "-" };
            rows.push(format!(
                "| {} | {kind} | {} / {} | {} ({:.1} s; creates {:.1} s) | {:.0} / {:.0} ms | {} | {:.0} / {:.0} µs | {:.0} µs ({} attempts, {:.0} µs/attempt; {} events) → {} pods/s | {target} | {before} → {} |",
                thousands(nodes as f64),
                thousands(r.bound as f64),
                thousands(r.pods as f64),
                thousands(rate),
                r.secs,
                r.create_secs,
                r.p50_ms,
                r.p99_ms,
                r.errors,
                r.cpu_us[0],
                r.cpu_us[1],
                per_pod,
                thousands(attempts as f64),
                cycle_us as f64 / attempts.max(1) as f64,
                thousands(events as f64),
                thousands(1e6 / per_pod.max(1e-9)),
                load()
            ));
            eprintln!("{}", rows.last().map(String::as_str).unwrap_or(""));
        }
        if o.deployment_replicas > 0 {
            eprintln!("sched bench: {nodes} nodes, Deployment of {}", o.deployment_replicas);
            let before = load();
            let (secs, avail) = run_deployment(&client, o.deployment_replicas).await?;
            rows.push(format!(
                "| {} | Deployment, {} replicas available | {} / {} | {:.1} s | - | - | - | - | - | {before} → {} |",
                thousands(nodes as f64),
                thousands(o.deployment_replicas as f64),
                thousands(avail as f64),
                thousands(o.deployment_replicas as f64),
                secs,
                load()
            ));
            eprintln!("{}", rows.last().map(String::as_str).unwrap_or(""));
        }
        drop(procs);
    }
    let mut table = String::from("| nodes | pods | bound | pods/s (first create → last bound) | create→bound p50 / p99 | create errors | CPU per pod: replica / hollow nodes | scheduler's own time per pod (cycle + watch events) → pods/s of one core | target | load avg (1/5/15 min) before → after |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        table.push_str(&r);
        table.push('\n');
    }
    Ok(table)
}
