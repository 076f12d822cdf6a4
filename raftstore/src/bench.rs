//! `kuberaft bench store`: the same etcd v3 workload against a three-replica kuberaft cluster
//! and a three-member etcd cluster (Debian's etcd-server), one after the other on loopback,
//! both with mutual TLS and fsync, same certificates, same client counts. Prints one table.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, GetOptions, TlsOptions, WatchOptions};

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub duration: Duration,
    pub clients: Vec<usize>,
    pub value_size: usize,
    pub keys: u64,
    pub etcd_bin: PathBuf,
    pub kuberaft_bin: PathBuf,
    pub work_dir: PathBuf,
    pub skip_etcd: bool,
    /// Pause after the compaction that precedes the read phases.
    pub settle: Duration,
}

#[derive(Clone, Debug, Default)]
pub struct Cell {
    pub ops: u64,
    pub secs: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Cell {
    fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.ops as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// Child processes killed (and reaped) on drop, whatever way a benchmark ends.
pub struct Procs(pub Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

const IPS_KUBERAFT: [&str; 3] = ["127.0.3.11", "127.0.3.12", "127.0.3.13"];
const IPS_ETCD: [&str; 3] = ["127.0.4.11", "127.0.4.12", "127.0.4.13"];

fn start_kuberaft(o: &BenchOptions, pki: &Path) -> anyhow::Result<Procs> {
    let initial: Vec<String> = IPS_KUBERAFT.iter().enumerate().map(|(i, ip)| format!("b{}={ip}:2380", i + 1)).collect();
    let mut procs = Procs(Vec::new());
    for (i, ip) in IPS_KUBERAFT.iter().enumerate() {
        let name = format!("b{}", i + 1);
        let dir = o.work_dir.join("kuberaft").join(&name);
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::File::create(dir.join("server.log"))?;
        let child = Command::new(&o.kuberaft_bin)
            .args(["server", "--name", &name])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--listen-client", &format!("{ip}:2379"), "--listen-peer", &format!("{ip}:2380"), "--listen-metrics", &format!("{ip}:2381"), "--listen-api", &format!("{ip}:6443")])
            .args(["--initial-cluster", &initial.join(","), "--cluster-token", "bench"])
            .arg("--cacert")
            .arg(pki.join("ca.crt"))
            .arg("--cert")
            .arg(pki.join("server.crt"))
            .arg("--key")
            .arg(pki.join("server.key"))
            .env("KUBERAFT_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        procs.0.push(child);
    }
    Ok(procs)
}

fn start_etcd(o: &BenchOptions, pki: &Path) -> anyhow::Result<Procs> {
    let initial: Vec<String> = IPS_ETCD.iter().enumerate().map(|(i, ip)| format!("e{}=https://{ip}:2380", i + 1)).collect();
    let mut procs = Procs(Vec::new());
    for (i, ip) in IPS_ETCD.iter().enumerate() {
        let name = format!("e{}", i + 1);
        let dir = o.work_dir.join("etcd").join(&name);
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::File::create(dir.join("etcd.log"))?;
        let p = |f: &str| pki.join(f).display().to_string();
        let child = Command::new(&o.etcd_bin)
            .args(["--name", &name, "--data-dir", &dir.join("data").display().to_string()])
            .args(["--listen-client-urls", &format!("https://{ip}:2379"), "--advertise-client-urls", &format!("https://{ip}:2379")])
            .args(["--listen-peer-urls", &format!("https://{ip}:2380"), "--initial-advertise-peer-urls", &format!("https://{ip}:2380")])
            .args(["--listen-metrics-urls", &format!("http://{ip}:2381")])
            .args(["--initial-cluster", &initial.join(","), "--initial-cluster-state", "new", "--initial-cluster-token", "bench"])
            .args(["--cert-file", &p("server.crt"), "--key-file", &p("server.key"), "--trusted-ca-file", &p("ca.crt"), "--client-cert-auth"])
            .args(["--peer-cert-file", &p("server.crt"), "--peer-key-file", &p("server.key"), "--peer-trusted-ca-file", &p("ca.crt"), "--peer-client-cert-auth"])
            .args(["--quota-backend-bytes", "8589934592", "--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {} (apt install etcd-server): {e}", o.etcd_bin.display()))?;
        procs.0.push(child);
    }
    Ok(procs)
}

async fn connect(pki: &Path, ips: &[&str]) -> anyhow::Result<Client> {
    let read = |f: &str| std::fs::read(pki.join(f));
    let tls = TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(read("ca.crt")?))
        .identity(etcd_client::Identity::from_pem(read("client.crt")?, read("client.key")?));
    let eps: Vec<String> = ips.iter().map(|ip| format!("https://{ip}:2379")).collect();
    let opts = ConnectOptions::new().with_tls(tls).with_connect_timeout(Duration::from_secs(2)).with_timeout(Duration::from_secs(30));
    Ok(Client::connect(eps, Some(opts)).await?)
}

async fn wait_ready(pki: &Path, ips: &[&str]) -> anyhow::Result<()> {
    let t = Instant::now();
    loop {
        if let Ok(mut c) = connect(pki, ips).await {
            if c.put("bench/ready", "1", None).await.is_ok() {
                return Ok(());
            }
        }
        if t.elapsed() > Duration::from_secs(30) {
            anyhow::bail!("cluster at {ips:?} not ready within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Put,
    Get,
}

/// `clients` concurrent loops for `duration` over `conns` connections.
async fn run_load(pki: &Path, ips: &[&str], op: Op, clients: usize, o: &BenchOptions) -> anyhow::Result<Cell> {
    let conns = clients.div_ceil(10).clamp(1, 100);
    let mut pool = Vec::with_capacity(conns);
    for _ in 0..conns {
        pool.push(connect(pki, ips).await?);
    }
    let value = vec![b'x'; o.value_size];
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for i in 0..clients {
        let mut kv = pool[i % conns].kv_client();
        let value = value.clone();
        let stop = stop.clone();
        let errors = errors.clone();
        let keys = o.keys;
        tasks.push(tokio::spawn(async move {
            let mut lat: Vec<u32> = Vec::new();
            let mut seed = (i as u64 + 1).wrapping_mul(0x9E3779B97F4A7C15);
            while !stop.load(Ordering::Relaxed) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let key = format!("bench/{:08}", seed % keys);
                let t = Instant::now();
                let r = match op {
                    Op::Put => kv.put(key, value.clone(), None).await.map(|_| ()),
                    Op::Get => kv.get(key, None).await.map(|_| ()),
                };
                match r {
                    Ok(()) => lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            lat
        }));
    }
    tokio::time::sleep(o.duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut all: Vec<u32> = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let e = errors.load(Ordering::Relaxed);
    if e > 0 {
        eprintln!("  ({e} errors)");
    }
    Ok(Cell { ops: all.len() as u64, secs, p50_ms: percentile(&all, 0.5), p99_ms: percentile(&all, 0.99) })
}

/// Events per second one prefix watcher receives while 64 clients put.
async fn run_watch(pki: &Path, ips: &[&str], o: &BenchOptions) -> anyhow::Result<Cell> {
    let mut w = connect(pki, ips).await?;
    let mut stream = w.watch("bench/", Some(WatchOptions::new().with_prefix())).await?;
    let count = Arc::new(AtomicU64::new(0));
    let c2 = count.clone();
    let reader = tokio::spawn(async move {
        while let Ok(Some(r)) = stream.message().await {
            c2.fetch_add(r.events().len() as u64, Ordering::Relaxed);
        }
    });
    let t = Instant::now();
    let load = run_load(pki, ips, Op::Put, 64, o).await?;
    // Let the watcher drain what was written.
    let deadline = Instant::now() + Duration::from_secs(10);
    while count.load(Ordering::Relaxed) < load.ops && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    reader.abort();
    Ok(Cell { ops: count.load(Ordering::Relaxed), secs, p50_ms: 0.0, p99_ms: 0.0 })
}

async fn bench_system(name: &str, pki: &Path, ips: &[&str], o: &BenchOptions) -> anyhow::Result<Vec<(String, usize, Cell)>> {
    wait_ready(pki, ips).await?;
    let mut rows = Vec::new();
    for &c in &o.clients {
        eprintln!("{name}: put, {c} clients");
        rows.push(("put".to_string(), c, run_load(pki, ips, Op::Put, c, o).await?));
    }
    // Reads after history has grown, with compaction on (as an apiserver runs it).
    let mut cli = connect(pki, ips).await?;
    let rev = cli.get("bench/ready", Some(GetOptions::new())).await?.header().map(|h| h.revision()).unwrap_or(0);
    if rev > 1 {
        cli.compact(rev, None).await?;
    }
    // Both systems remove compacted history in the background; let that settle so the reads
    // measure steady state (the same pause for both).
    tokio::time::sleep(o.settle).await;
    for &c in &o.clients {
        eprintln!("{name}: linearizable get, {c} clients");
        rows.push(("get (linearizable)".to_string(), c, run_load(pki, ips, Op::Get, c, o).await?));
    }
    eprintln!("{name}: watch while 64 clients put");
    rows.push(("watch events (64 writers)".to_string(), 1, run_watch(pki, ips, o).await?));
    Ok(rows)
}

pub async fn run(o: BenchOptions) -> anyhow::Result<String> {
    let _ = std::fs::remove_dir_all(&o.work_dir);
    std::fs::create_dir_all(&o.work_dir)?;
    let pki = o.work_dir.join("pki");
    let hosts: Vec<String> = IPS_KUBERAFT.iter().chain(IPS_ETCD.iter()).map(|s| s.to_string()).collect();
    crate::certs::generate(&pki, &hosts)?;

    let k = {
        let _procs = start_kuberaft(&o, &pki)?;
        bench_system("kuberaft", &pki, &IPS_KUBERAFT, &o).await?
    };
    let e = if o.skip_etcd {
        Vec::new()
    } else {
        let _procs = start_etcd(&o, &pki)?;
        bench_system("etcd", &pki, &IPS_ETCD, &o).await?
    };
    let mut out = String::new();
    out += &format!(
        "| workload | clients | kuberaft ops/s | p50 ms | p99 ms | etcd 3.4 ops/s | p50 ms | p99 ms | ratio |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for (i, (w, c, kc)) in k.iter().enumerate() {
        let ec = e.get(i).map(|r| r.2.clone()).unwrap_or_default();
        let ratio = if ec.rate() > 0.0 { format!("{:.2}x", kc.rate() / ec.rate()) } else { "-".into() };
        let lat = |cell: &Cell| if cell.p50_ms > 0.0 { (format!("{:.2}", cell.p50_ms), format!("{:.2}", cell.p99_ms)) } else { ("-".into(), "-".into()) };
        let (kp50, kp99) = lat(kc);
        let (ep50, ep99) = lat(&ec);
        out += &format!("| {w} | {c} | {:.0} | {kp50} | {kp99} | {:.0} | {ep50} | {ep99} | {ratio} |\n", kc.rate(), ec.rate());
    }
    Ok(out)
}
