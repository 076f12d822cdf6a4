//! `kuberaft bench api`: the Kubernetes API of a three-replica kuberaft cluster on loopback,
//! measured through HTTPS (HTTP/2, client certificates) the way controllers and kubectl use it:
//! GET and LIST of 10,000 Pods (whole and paged) and the replicas' memory holding them, then Pod
//! creates at several client counts, then watch fan-out to many watchers. Prints one table. No
//! peer system is run (kube-apiserver is not installable here).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper::Method;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub kuberaft_bin: PathBuf,
    /// Scratch directory (wiped first).
    pub work_dir: PathBuf,
    /// Length of each Pod create measurement.
    pub duration: Duration,
    /// Concurrent creators, one measurement each.
    pub clients: Vec<usize>,
    /// Pods in namespace bench-list for the GET and LIST measurements.
    pub pods: usize,
    /// Concurrent watches for the fan-out measurement.
    pub watchers: usize,
}

impl BenchOptions {
    pub fn new(kuberaft_bin: PathBuf, work_dir: PathBuf) -> Self {
        BenchOptions { kuberaft_bin, work_dir, duration: Duration::from_secs(10), clients: vec![64, 512], pods: 10_000, watchers: 1000 }
    }
}

const IPS: [&str; 3] = ["127.0.5.11", "127.0.5.12", "127.0.5.13"];
const API_PORT: u16 = 6443;
/// HTTP/2 streams per connection at most (the server allows more; kube clients use ~100).
const STREAMS_PER_CONN: usize = 100;
/// ConfigMaps written during the fan-out measurement, and the pause between them.
const FANOUT_WRITES: usize = 50;
const FANOUT_GAP: Duration = Duration::from_millis(100);

use raftstore::bench::Procs;

fn start(o: &BenchOptions, pki: &Path) -> anyhow::Result<Procs> {
    let initial: Vec<String> = IPS.iter().enumerate().map(|(i, ip)| format!("a{}={ip}:2380", i + 1)).collect();
    let mut procs = Procs(Vec::new());
    for (i, ip) in IPS.iter().enumerate() {
        let name = format!("a{}", i + 1);
        let dir = o.work_dir.join(&name);
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::File::create(dir.join("server.log"))?;
        let child = Command::new(&o.kuberaft_bin)
            .args(["server", "--name", &name])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--listen-client", &format!("{ip}:2379"), "--listen-peer", &format!("{ip}:2380"), "--listen-metrics", &format!("{ip}:2381"), "--listen-api", &format!("{ip}:{API_PORT}")])
            .args(["--initial-cluster", &initial.join(",")])
            .arg("--cacert")
            .arg(pki.join("ca.crt"))
            .arg("--cert")
            .arg(pki.join("server.crt"))
            .arg("--key")
            .arg(pki.join("server.key"))
            .env("KUBERAFT_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", o.kuberaft_bin.display()))?;
        procs.0.push(child);
    }
    Ok(procs)
}

// ---------------------------------------------------------------------------------------------
// HTTPS/HTTP/2 client

fn tls_connector(pki: &Path) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let read = |f: &str| std::fs::read(pki.join(f)).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", pki.join(f).display()));
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &read("ca.crt")?[..]) {
        roots.add(c?)?;
    }
    let certs: Vec<_> = rustls_pemfile::certs(&mut &read("client.crt")?[..]).collect::<Result<_, _>>()?;
    let key = rustls_pemfile::private_key(&mut &read("client.key")?[..])?.ok_or_else(|| anyhow::anyhow!("no private key in client.key"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions()?.with_root_certificates(roots).with_client_auth_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}

type Sender = SendRequest<Full<Bytes>>;

async fn connect(tls: &tokio_rustls::TlsConnector, ip: &str) -> anyhow::Result<Sender> {
    let tcp = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect((ip, API_PORT))).await.map_err(|_| anyhow::anyhow!("connect {ip}: timeout"))??;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::IpAddress(ip.parse::<std::net::IpAddr>()?.into());
    let stream = tokio::time::timeout(Duration::from_secs(10), tls.connect(name, tcp)).await.map_err(|_| anyhow::anyhow!("TLS handshake with {ip}: timeout"))??;
    if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
        anyhow::bail!("{ip}: the server did not negotiate HTTP/2");
    }
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(16 << 20)
        .max_concurrent_reset_streams(1000)
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// HTTP/2 connections to every replica, used round-robin (consecutive requests go to
/// consecutive replicas).
struct Pool {
    /// (replica index, connection), interleaved by replica.
    conns: Vec<(usize, Sender)>,
    next: AtomicUsize,
}

impl Pool {
    async fn new(tls: &tokio_rustls::TlsConnector, per_replica: usize) -> anyhow::Result<Pool> {
        let mut conns = Vec::new();
        for _ in 0..per_replica.max(1) {
            for (r, ip) in IPS.iter().enumerate() {
                conns.push((r, connect(tls, ip).await?));
            }
        }
        Ok(Pool { conns, next: AtomicUsize::new(0) })
    }

    fn pick(&self) -> (usize, Sender) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        self.conns[i].clone()
    }

    /// Starts a request; the response body is left to the caller.
    async fn start(&self, method: Method, path: &str, body: Option<Bytes>) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let (r, mut s) = self.pick();
        request(&mut s, IPS[r], method, path, body).await
    }

    /// A whole request to replica `r` (its first connection).
    async fn send_to(&self, r: usize, method: Method, path: &str) -> anyhow::Result<(u16, Bytes)> {
        let (_, mut s) = self.conns.iter().find(|(i, _)| *i == r).cloned().ok_or_else(|| anyhow::anyhow!("no connection to replica {r}"))?;
        let resp = request(&mut s, IPS[r], method, path, None).await?;
        let code = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((code, body))
    }

    /// A whole request: status and body.
    async fn send(&self, method: Method, path: &str, body: Option<Bytes>) -> anyhow::Result<(u16, Bytes)> {
        let resp = self.start(method, path, body).await?;
        let code = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((code, body))
    }
}

async fn request(s: &mut Sender, ip: &str, method: Method, path: &str, body: Option<Bytes>) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
    s.ready().await?;
    let mut b = hyper::Request::builder().method(method).uri(format!("https://{ip}:{API_PORT}{path}")).header("accept", "application/json");
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    let req = b.body(Full::new(body.unwrap_or_default()))?;
    Ok(s.send_request(req).await?)
}

/// Non-2xx answers and transport failures, counted, with the first few kept as evidence.
#[derive(Default)]
struct Errors {
    count: AtomicU64,
    samples: Mutex<Vec<String>>,
}

impl Errors {
    fn add(&self, what: &str, detail: String) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() < 5 {
            let detail: String = detail.chars().take(300).collect();
            eprintln!("  error ({what}): {detail}");
            s.push(format!("{what}: {detail}"));
        }
    }

    /// Records the outcome of a request; true if it succeeded.
    fn check(&self, what: &str, r: &anyhow::Result<(u16, Bytes)>) -> bool {
        match r {
            Ok((c, _)) if (200..300).contains(c) => true,
            Ok((c, b)) => {
                self.add(what, format!("HTTP {c} {}", String::from_utf8_lossy(b)));
                false
            }
            Err(e) => {
                self.add(what, format!("{e:#}"));
                false
            }
        }
    }

    fn get(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}

/// Percentile of sorted microseconds, in milliseconds.
fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn p50_p99(mut v: Vec<u32>) -> (f64, f64) {
    v.sort_unstable();
    (percentile(&v, 0.5), percentile(&v, 0.99))
}

fn pod_json(name: &str) -> Bytes {
    Bytes::from(
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "bench"}},
            "spec": {"containers": [{"name": "main", "image": "busybox", "command": ["sleep", "3600"]}]},
        })
        .to_string(),
    )
}

async fn ensure_namespace(pool: &Pool, ns: &str, errors: &Errors) -> anyhow::Result<()> {
    let body = Bytes::from(serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}).to_string());
    let r = pool.send(Method::POST, "/api/v1/namespaces", Some(body)).await;
    if let Ok((409, _)) = r {
        return Ok(());
    }
    if !errors.check("create namespace", &r) {
        anyhow::bail!("cannot create namespace {ns}");
    }
    // A linearizable GET on every replica makes each apply the create before the benchmark
    // writes into the namespace (creates check it with a local read).
    for (r, ip) in IPS.iter().enumerate() {
        let g = pool.send_to(r, Method::GET, &format!("/api/v1/namespaces/{ns}")).await;
        if !errors.check("get namespace", &g) {
            anyhow::bail!("namespace {ns} is not visible on {ip}");
        }
    }
    Ok(())
}

async fn wait_ready(tls: &tokio_rustls::TlsConnector) -> anyhow::Result<()> {
    let t = Instant::now();
    for ip in IPS {
        loop {
            let ok = async {
                let mut s = connect(tls, ip).await?;
                let resp = request(&mut s, ip, Method::GET, "/api/v1/namespaces/default", None).await?;
                let code = resp.status().as_u16();
                let body = resp.into_body().collect().await?.to_bytes();
                anyhow::Ok((code, body))
            }
            .await;
            let last = match ok {
                Ok((200, _)) => break,
                Ok((c, b)) => format!("HTTP {c} {}", String::from_utf8_lossy(&b)),
                Err(e) => format!("{e:#}"),
            };
            if t.elapsed() > Duration::from_secs(60) {
                anyhow::bail!("{ip}: GET /api/v1/namespaces/default did not succeed within 60 s (last: {last})");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|kb| kb.parse::<f64>().ok()))
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------------
// Measurements

struct Rate {
    ops: u64,
    secs: f64,
    p50: f64,
    p99: f64,
    errors: u64,
}

/// `clients` workers POST Pods to namespace default for `duration`.
async fn creates(tls: &tokio_rustls::TlsConnector, clients: usize, o: &BenchOptions) -> anyhow::Result<Rate> {
    // A handful of connections per replica, ~50 streams each at most.
    let per_replica = clients.div_ceil(3 * 50).clamp(2, 8);
    let pool = Arc::new(Pool::new(tls, per_replica).await?);
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(Errors::default());
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for w in 0..clients {
        let (pool, stop, errors) = (pool.clone(), stop.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let body = pod_json(&format!("c{clients}-{w}-{seq}"));
                seq += 1;
                let t = Instant::now();
                let r = pool.send(Method::POST, "/api/v1/namespaces/default/pods", Some(body)).await;
                if errors.check("create pod", &r) {
                    lat.push(micros(t.elapsed()));
                }
            }
            lat
        }));
    }
    tokio::time::sleep(o.duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    let secs = start.elapsed().as_secs_f64();
    let ops = all.len() as u64;
    let (p50, p99) = p50_p99(all);
    Ok(Rate { ops, secs, p50, p99, errors: errors.get() })
}

/// Creates `n` Pods p-00000.. in `ns` with 64 workers; returns the seconds it took.
async fn populate(pool: &Arc<Pool>, ns: &str, n: usize, errors: &Arc<Errors>) -> anyhow::Result<f64> {
    let next = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (pool, next, errors, ns) = (pool.clone(), next.clone(), errors.clone(), ns.to_string());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let r = pool.send(Method::POST, &format!("/api/v1/namespaces/{ns}/pods"), Some(pod_json(&format!("p-{i:05}")))).await;
                errors.check("populate pod", &r);
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(t.elapsed().as_secs_f64())
}

#[derive(serde::Deserialize)]
struct ListMeta {
    #[serde(default, rename = "continue")]
    cont: Option<String>,
    #[serde(default, rename = "resourceVersion")]
    resource_version: Option<String>,
}

#[derive(serde::Deserialize)]
struct List {
    metadata: ListMeta,
    #[serde(default)]
    items: Vec<serde::de::IgnoredAny>,
}

struct ReadResults {
    populate_secs: f64,
    get: (f64, f64),
    list: (f64, f64),
    list_ttfb: (f64, f64),
    rss_before_list: (f64, String),
    list_bytes: usize,
    list_items: usize,
    paged: (f64, f64),
    paged_items: usize,
    errors: u64,
}

async fn reads(tls: &tokio_rustls::TlsConnector, o: &BenchOptions, rss: &dyn Fn() -> (f64, String)) -> anyhow::Result<ReadResults> {
    let pool = Arc::new(Pool::new(tls, 2).await?);
    let errors = Arc::new(Errors::default());
    ensure_namespace(&pool, "bench-list", &errors).await?;
    eprintln!("api: creating {} pods in bench-list", o.pods);
    let populate_secs = populate(&pool, "bench-list", o.pods, &errors).await?;

    // GET of single Pods: 2,000 by 16 workers.
    eprintln!("api: get");
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..16u64 {
        let (pool, next, errors, n) = (pool.clone(), next.clone(), errors.clone(), o.pods.max(1));
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut seed = (w + 1).wrapping_mul(0x9E3779B97F4A7C15);
            while next.fetch_add(1, Ordering::Relaxed) < 2000 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let path = format!("/api/v1/namespaces/bench-list/pods/p-{:05}", seed % n as u64);
                let t = Instant::now();
                let r = pool.send(Method::GET, &path, None).await;
                if errors.check("get pod", &r) {
                    lat.push(micros(t.elapsed()));
                }
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    let get = p50_p99(all);

    let rss_before_list = rss();

    // LIST of the whole namespace, 30 times one after the other. The server builds the whole
    // answer before it sends headers, so time to headers is (almost all) server time.
    eprintln!("api: list");
    let (mut lat, mut ttfb) = (Vec::new(), Vec::new());
    let (mut list_bytes, mut list_items) = (0, 0);
    for i in 0..30 {
        let t = Instant::now();
        let r = async {
            let resp = pool.start(Method::GET, "/api/v1/namespaces/bench-list/pods", None).await?;
            let head = t.elapsed();
            let code = resp.status().as_u16();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok((head, (code, body)))
        }
        .await;
        let d = t.elapsed();
        let (head, r) = match r {
            Ok((h, r)) => (h, Ok(r)),
            Err(e) => (d, Err(e)),
        };
        if errors.check("list pods", &r) {
            lat.push(micros(d));
            ttfb.push(micros(head));
            if i == 0 {
                let body = &r.as_ref().expect("checked").1;
                list_bytes = body.len();
                list_items = serde_json::from_slice::<List>(body)?.items.len();
            }
        }
    }
    let list = p50_p99(lat);
    let list_ttfb = p50_p99(ttfb);

    // LIST with limit=500, following continue to the end, 10 times.
    eprintln!("api: paged list");
    let mut lat = Vec::new();
    let mut paged_items = 0;
    for _ in 0..10 {
        let t = Instant::now();
        let (mut items, mut cont, mut ok) = (0, String::new(), true);
        loop {
            let mut path = "/api/v1/namespaces/bench-list/pods?limit=500".to_string();
            if !cont.is_empty() {
                path += &format!("&continue={}", form_urlencoded::byte_serialize(cont.as_bytes()).collect::<String>());
            }
            let r = pool.send(Method::GET, &path, None).await;
            if !errors.check("paged list pods", &r) {
                ok = false;
                break;
            }
            let page: List = serde_json::from_slice(&r.expect("checked").1)?;
            items += page.items.len();
            match page.metadata.cont.filter(|c| !c.is_empty()) {
                Some(c) => cont = c,
                None => break,
            }
        }
        if ok {
            lat.push(micros(t.elapsed()));
            paged_items = items;
        }
    }
    let paged = p50_p99(lat);
    Ok(ReadResults { populate_secs, get, list, list_ttfb, rss_before_list, list_bytes, list_items, paged, paged_items, errors: errors.get() })
}

struct FanOut {
    p50: f64,
    p99: f64,
    write_p50: f64,
    missed: u64,
    opened: usize,
    errors: u64,
}

async fn fanout(tls: &tokio_rustls::TlsConnector, o: &BenchOptions) -> anyhow::Result<FanOut> {
    let errors = Arc::new(Errors::default());
    let writer = Pool::new(tls, 1).await?;
    ensure_namespace(&writer, "bench-watch", &errors).await?;
    let r = writer.send(Method::GET, "/api/v1/namespaces/bench-watch/configmaps", None).await;
    if !errors.check("list configmaps", &r) {
        anyhow::bail!("cannot list configmaps in bench-watch");
    }
    let rv = serde_json::from_slice::<List>(&r.expect("checked").1)?.metadata.resource_version.unwrap_or_default();

    // Watches spread over replicas and connections, at most STREAMS_PER_CONN per connection.
    let n = o.watchers;
    let per_replica = n.div_ceil(3 * STREAMS_PER_CONN).max(1);
    let watch_pool = Pool::new(tls, per_replica).await?;
    let base = Instant::now();
    // Receive time (ns since base, 0 = not yet) per watcher and write.
    let recv: Arc<Vec<AtomicU64>> = Arc::new((0..n * FANOUT_WRITES).map(|_| AtomicU64::new(0)).collect());
    let opened = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let complete = Arc::new(AtomicUsize::new(0));
    let path = format!("/api/v1/namespaces/bench-watch/configmaps?watch=1&resourceVersion={rv}");
    let mut tasks = Vec::with_capacity(n);
    for w in 0..n {
        let (r, mut s) = watch_pool.pick();
        let (recv, opened, failed, complete, errors, path) = (recv.clone(), opened.clone(), failed.clone(), complete.clone(), errors.clone(), path.clone());
        tasks.push(tokio::spawn(async move {
            let resp = match request(&mut s, IPS[r], Method::GET, &path, None).await {
                Ok(resp) if resp.status().is_success() => resp,
                Ok(resp) => {
                    let code = resp.status().as_u16();
                    let b = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    errors.add("watch", format!("HTTP {code} {}", String::from_utf8_lossy(&b)));
                    failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(e) => {
                    errors.add("watch", format!("{e:#}"));
                    failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            opened.fetch_add(1, Ordering::Relaxed);
            let mut body = resp.into_body();
            let mut buf: Vec<u8> = Vec::new();
            let mut got = 0;
            loop {
                let frame = match body.frame().await {
                    Some(Ok(f)) => f,
                    Some(Err(e)) => {
                        errors.add("watch stream", format!("{e:#}"));
                        return;
                    }
                    None => {
                        errors.add("watch stream", "ended by the server".into());
                        return;
                    }
                };
                let at = base.elapsed().as_nanos() as u64;
                let Ok(data) = frame.into_data() else { continue };
                buf.extend_from_slice(&data);
                while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=nl).collect();
                    #[derive(serde::Deserialize)]
                    struct Meta {
                        name: String,
                    }
                    #[derive(serde::Deserialize)]
                    struct Obj {
                        metadata: Meta,
                    }
                    #[derive(serde::Deserialize)]
                    struct Ev {
                        #[serde(rename = "type")]
                        ty: String,
                        object: Obj,
                    }
                    let ev: Ev = match serde_json::from_slice(&line) {
                        Ok(e) => e,
                        Err(e) => {
                            errors.add("watch event", format!("{e}: {}", String::from_utf8_lossy(&line)));
                            continue;
                        }
                    };
                    if ev.ty != "ADDED" {
                        errors.add("watch event", format!("unexpected {} event: {}", ev.ty, String::from_utf8_lossy(&line)));
                        continue;
                    }
                    let Some(j) = ev.object.metadata.name.strip_prefix("cm-").and_then(|s| s.parse::<usize>().ok()).filter(|j| *j < FANOUT_WRITES) else { continue };
                    if recv[w * FANOUT_WRITES + j].swap(at.max(1), Ordering::Relaxed) == 0 {
                        got += 1;
                        if got == FANOUT_WRITES {
                            complete.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }));
    }
    let t = Instant::now();
    while opened.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < n {
        if t.elapsed() > Duration::from_secs(60) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let opened_n = opened.load(Ordering::Relaxed);
    eprintln!("api: {opened_n}/{n} watches open after {:.1} s; writing {FANOUT_WRITES} configmaps", t.elapsed().as_secs_f64());
    // Let the last streams settle before the first write.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut sent = vec![0u64; FANOUT_WRITES];
    let mut write_lat = Vec::new();
    for (j, at) in sent.iter_mut().enumerate() {
        let body = Bytes::from(serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("cm-{j:03}")}, "data": {"k": "v"}}).to_string());
        let t = Instant::now();
        *at = base.elapsed().as_nanos() as u64;
        let r = writer.send(Method::POST, "/api/v1/namespaces/bench-watch/configmaps", Some(body)).await;
        if errors.check("create configmap", &r) {
            write_lat.push(micros(t.elapsed()));
        }
        tokio::time::sleep_until(tokio::time::Instant::from_std(t + FANOUT_GAP)).await;
    }
    let t = Instant::now();
    while complete.load(Ordering::Relaxed) < opened_n && t.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for task in &tasks {
        task.abort();
    }
    // Per write: when the last watcher had it.
    let mut lat = Vec::new();
    let mut missed = 0u64;
    for (j, &s) in sent.iter().enumerate() {
        let mut last = 0u64;
        for w in 0..n {
            let v = recv[w * FANOUT_WRITES + j].load(Ordering::Relaxed);
            if v == 0 {
                missed += 1;
            } else {
                last = last.max(v);
            }
        }
        if last > 0 {
            lat.push((last.saturating_sub(s) / 1000).min(u32::MAX as u64) as u32);
        }
    }
    let (p50, p99) = p50_p99(lat);
    let (write_p50, _) = p50_p99(write_lat);
    Ok(FanOut { p50, p99, write_p50, missed, opened: opened_n, errors: errors.get() })
}

// ---------------------------------------------------------------------------------------------

fn thousands(v: f64) -> String {
    let s = format!("{:.0}", v);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn verdict(target: &str, ok: bool) -> String {
    format!("{target} ({})", if ok { "met" } else { "**not met**" })
}

pub async fn run(o: BenchOptions) -> anyhow::Result<String> {
    let _ = std::fs::remove_dir_all(&o.work_dir);
    std::fs::create_dir_all(&o.work_dir)?;
    let pki = o.work_dir.join("pki");
    let hosts: Vec<String> = IPS.iter().map(|s| s.to_string()).collect();
    raftstore::certs::generate(&pki, &hosts)?;
    let tls = tls_connector(&pki)?;

    let procs = start(&o, &pki)?;
    eprintln!("api: waiting for three replicas");
    wait_ready(&tls).await?;
    let pids: Vec<u32> = procs.0.iter().map(Child::id).collect();

    let rss = |pids: &[u32]| -> (f64, String) {
        let v: Vec<f64> = pids.iter().map(|p| rss_mib(*p)).collect();
        (v.iter().cloned().fold(0.0, f64::max), v.iter().map(|m| format!("{m:.0}")).collect::<Vec<_>>().join(" / "))
    };
    let rss_idle = rss(&pids);

    // Reads first, so that the memory figure is for the stated 10,000 Pods; the create phase
    // then adds as many Pods as it manages to write.
    let rd = reads(&tls, &o, &|| rss(&pids)).await?;
    let rss_reads = rss(&pids);

    let mut create_rows = Vec::new();
    let mut created = 0u64;
    for &c in &o.clients {
        eprintln!("api: pod creates, {c} clients");
        let r = creates(&tls, c, &o).await?;
        created += r.ops;
        let rate = if r.secs > 0.0 { r.ops as f64 / r.secs } else { 0.0 };
        create_rows.push((format!("Pod creates/s, {c} clients"), thousands(rate), verdict("≥ 5,000", rate >= 5000.0)));
        create_rows.push((format!("Pod create p50 / p99, {c} clients"), format!("{:.1} / {:.1} ms", r.p50, r.p99), "-".into()));
        create_rows.push((format!("Pod create errors, {c} clients"), r.errors.to_string(), verdict("0", r.errors == 0)));
    }
    let rss_creates = rss(&pids);

    eprintln!("api: watch fan-out to {} watchers", o.watchers);
    let f = fanout(&tls, &o).await?;

    let mut rows: Vec<(String, String, String)> = create_rows;
    rows.push((format!("create {} Pods (64 workers)", thousands(o.pods as f64)), format!("{:.1} s ({}/s)", rd.populate_secs, thousands(o.pods as f64 / rd.populate_secs.max(1e-9))), "-".into()));
    rows.push(("GET Pod p50 / p99 (16 workers)".into(), format!("{:.1} / {:.1} ms", rd.get.0, rd.get.1), "-".into()));
    rows.push((
        format!(
            "LIST {} Pods p50 / p99 ({} items, {:.1} MiB; headers after {:.1} / {:.1} ms)",
            thousands(o.pods as f64),
            thousands(rd.list_items as f64),
            rd.list_bytes as f64 / (1 << 20) as f64,
            rd.list_ttfb.0,
            rd.list_ttfb.1
        ),
        format!("{:.1} / {:.1} ms", rd.list.0, rd.list.1),
        verdict("p99 ≤ 100 ms", rd.list.1 <= 100.0 && rd.list_items == o.pods),
    ));
    rows.push((
        format!("paged LIST (limit=500) p50 / p99 ({} items)", thousands(rd.paged_items as f64)),
        format!("{:.1} / {:.1} ms", rd.paged.0, rd.paged.1),
        if rd.paged_items == o.pods { "-".into() } else { "**item count wrong**".into() },
    ));
    rows.push(("GET/LIST errors".into(), rd.errors.to_string(), verdict("0", rd.errors == 0)));
    rows.push((
        format!("watch fan-out p50 / p99 ({}/{} watchers open, write p50 {:.1} ms)", f.opened, o.watchers, f.write_p50),
        format!("{:.1} / {:.1} ms", f.p50, f.p99),
        verdict("p99 ≤ 50 ms", f.p99 <= 50.0),
    ));
    rows.push(("missed deliveries".into(), f.missed.to_string(), verdict("0", f.missed == 0)));
    rows.push(("watch errors".into(), f.errors.to_string(), verdict("0", f.errors == 0)));
    rows.push((format!("RSS max MiB, {} Pods stored (per replica {})", thousands(o.pods as f64), rss_reads.1), format!("{:.0}", rss_reads.0), verdict("≤ 300", rss_reads.0 <= 300.0)));
    rows.push((
        format!("RSS max MiB, {} Pods stored, before the LISTs (per replica {})", thousands(o.pods as f64), rd.rss_before_list.1),
        format!("{:.0}", rd.rss_before_list.0),
        "-".into(),
    ));
    rows.push((format!("RSS max MiB, idle (per replica {})", rss_idle.1), format!("{:.0}", rss_idle.0), "-".into()));
    rows.push((
        format!("RSS max MiB after creates, {} Pods stored (per replica {})", thousands((created + o.pods as u64) as f64), rss_creates.1),
        format!("{:.0}", rss_creates.0),
        "-".into(),
    ));
    drop(procs);

    let mut out = String::from("| measurement | value | target |\n|---|---:|---|\n");
    for (m, v, t) in rows {
        out += &format!("| {m} | {v} | {t} |\n");
    }
    out += &format!(
        "\nThree kuberaft replicas on loopback ({}), HTTPS with client certificates over HTTP/2, fsync on; client and servers share this machine ({} CPUs). \
         No peer system was run: kube-apiserver is not installable here.\n",
        IPS.join(", "),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole benchmark against target/release/kuberaft:
    /// `cargo test --release -p apiserver bench -- --ignored --nocapture` (BENCH_BIN,
    /// BENCH_DURATION, BENCH_CLIENTS, BENCH_PODS, BENCH_WATCHERS override the defaults).
    #[test]
    #[ignore]
    fn bench_api() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf();
        let mut o = BenchOptions::new(root.join("target/release/kuberaft"), PathBuf::from("/tmp/kuberaft-bench-api"));
        if let Ok(s) = std::env::var("BENCH_BIN") {
            o.kuberaft_bin = PathBuf::from(s);
        }
        if let Ok(s) = std::env::var("BENCH_DURATION") {
            o.duration = Duration::from_secs(s.parse().expect("BENCH_DURATION"));
        }
        if let Ok(s) = std::env::var("BENCH_PODS") {
            o.pods = s.parse().expect("BENCH_PODS");
        }
        if let Ok(s) = std::env::var("BENCH_WATCHERS") {
            o.watchers = s.parse().expect("BENCH_WATCHERS");
        }
        if let Ok(s) = std::env::var("BENCH_CLIENTS") {
            o.clients = s.split(',').map(|c| c.trim().parse().expect("BENCH_CLIENTS")).collect();
        }
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
        let table = rt.block_on(run(o)).expect("bench");
        println!("{table}");
    }
}
